"""The pixel gate: its statistics, its place in a bundle, and what it does on real images.

The demo bundle's gate is fitted on phantoms; these tests show it stops what it has never
seen (pydicom-data's real chest and distal-tibia CRs, held-out synthetic knees, spines,
pelves and feet) and lets in-distribution phantoms through at the model card's rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from config import REGION_CLASSES, UNSUPPORTED
from models.runtime.bundle import BundleError, load_bundle, load_metadata, save_bundle
from models.runtime.inference import HierarchicalModel, StageOneRejection
from models.runtime.ood import FeatureDistance
from models.training.ood_set import (
    gate_figures,
    out_of_distribution_figures,
    out_of_distribution_set,
    pixel_gate_calls,
)
from models.training.phantoms import PhantomSplit
from tests.bundles import build_test_bundle


def test_the_distance_is_small_inside_the_training_classes_and_large_outside() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    labels = torch.arange(2).repeat_interleave(200)
    features = centres[labels] + torch.randn(400, 3, generator=generator)
    distance = FeatureDistance.fit(features, labels)
    near = distance(centres + 0.1)
    far = distance(torch.tensor([[3.0, 12.0, -9.0]]))
    assert near.max() < 1.0 < 100.0 < far.item()


def test_wrong_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"precision shape \(2, 2\) is not \(3, 3\)"):
        FeatureDistance(torch.zeros(2, 3), torch.eye(2))
    distance = FeatureDistance(torch.zeros(2, 3), torch.eye(3))
    with pytest.raises(ValueError, match=r"features shape \(1, 4\) is not \(N, 3\)"):
        distance(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="3 labels for 4 feature vectors"):
        FeatureDistance.fit(torch.zeros(4, 3), torch.zeros(3))


def test_a_bundle_whose_gate_lacks_its_statistics_does_not_load(
    demo_bundle_dir: Path, tmp_path: Path
) -> None:
    model = load_bundle(demo_bundle_dir)
    assert model.metadata.pixel_gate is not None and model.feature_distance is not None
    with pytest.raises(BundleError, match="statistics and its metadata go together"):
        save_bundle(tmp_path / "b", model.metadata, model.region_network, model.fracture_networks)
    copy = save_bundle(
        tmp_path / "b",
        model.metadata,
        model.region_network,
        model.fracture_networks,
        model.feature_distance,
    )
    weights = torch.load(copy / "models" / "model.pt", weights_only=True)
    del weights["pixel_gate"]
    torch.save(weights, copy / "models" / "model.pt")
    with pytest.raises(BundleError, match="no pixel_gate statistics"):
        load_bundle(copy)


def test_a_bundle_without_a_gate_still_loads_and_gates_by_class_and_floor(tmp_path: Path) -> None:
    bundle = build_test_bundle(tmp_path / "untrained", stage1_region="unsupported")
    assert load_metadata(bundle).pixel_gate is None
    model = load_bundle(bundle)
    (call,) = model.classify_regions(np.zeros((1, 1, model.image_size, model.image_size)))
    assert call.region is None and call.distance is None
    assert call.rejection is StageOneRejection.UNSUPPORTED
    assert call.reason == "stage 1 recognises none of the regions this model assesses"


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_pydicom_datas_real_chest_and_tibia_radiographs_are_not_assessed(
    demo_model: HierarchicalModel, name: str
) -> None:
    (image,) = [i for i in out_of_distribution_set(per_body_part=0) if name in i.source]
    (call,) = pixel_gate_calls(demo_model, [image.display])
    assert call.region is None, f"{image.source} was assessed as {call.region}"
    assert call.reason


def test_held_out_other_body_parts_are_stopped_at_the_model_cards_rate(
    demo_model: HierarchicalModel,
) -> None:
    # A fresh draw (seed 1), not the set the model card was measured on (seed 0).
    fresh = [i for i in out_of_distribution_set(20, seed=1) if "synthetic" in i.source]
    measured = out_of_distribution_figures(demo_model, fresh)["groups"]
    card = demo_model.metadata.metrics["evaluation"]["pixel_gate"]["groups"]
    group = "synthetic other body parts"
    assert measured[group]["not_assessed"] >= min(0.9, card[group]["not_assessed"] - 0.1)


def test_in_distribution_phantoms_pass_at_the_model_cards_rate(
    demo_model: HierarchicalModel, held_out: PhantomSplit
) -> None:
    supported = held_out.regions != REGION_CLASSES.index(UNSUPPORTED)
    calls = demo_model.classify_regions(held_out.images[torch.as_tensor(supported)])
    passed = 1 - gate_figures(calls)["not_assessed"]
    card = demo_model.metadata.metrics["evaluation"]["pixel_gate"]["in_distribution"]
    assert passed >= 1 - card["not_assessed"] - 0.05
    gate = demo_model.metadata.pixel_gate
    assert gate is not None and gate.in_distribution_acceptance == 0.99
