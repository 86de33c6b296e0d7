"""The shared-backbone form: one network whose logits are stage 1's classes, then one
fracture logit per region and one common to all; its loss, its views, and the model's
one-pass results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from config.domain.vocabulary import region_classes
from models.runtime.bundle import (
    BundleError,
    load_bundle,
    load_metadata,
    save_bundle,
    update_metadata,
)
from models.runtime.gradcam import compute_cam, hottest_box
from models.runtime.inference import BOX_FRACTION
from models.runtime.networks import NetworkSpec, SharedStages, build_network, shared_outputs
from models.training.evaluation import write_beside
from models.training.stages import SharedStagesLoss
from tests.bundles import DEFAULT_POINTS, build_test_bundle

REGIONS = ("elbow", "hand", "wrist")
CLASSES = len(region_classes(REGIONS))  # the regions and 'unsupported'
SMALL = {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1), "bn_size": 2}


def _bundle(path: Path, shared_backbone: bool = True) -> Path:
    points = {region: DEFAULT_POINTS[region] for region in REGIONS}
    return build_test_bundle(path, shared_backbone=shared_backbone, regions=REGIONS, points=points)


def _shared(seed: int = 0) -> SharedStages:
    torch.manual_seed(seed)
    spec = NetworkSpec(
        architecture="densenet-small", out_channels=shared_outputs(len(REGIONS)), kwargs=SMALL
    )
    return SharedStages(build_network(spec), REGIONS).eval()


def test_the_views_are_slices_of_one_forward_pass_with_the_same_weights() -> None:
    shared = _shared()
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        logits = shared(images)
        assert logits.shape == (3, 4 + 3 + 1)  # stage 1, each region's, the common one
        assert torch.equal(shared.region_view()(images), logits[:, :CLASSES])
        hand = logits[:, 5:6] + logits[:, 7:8]  # its own and the common one
        assert torch.allclose(shared.fracture_view("hand")(images), hand)
        assert torch.allclose(shared.fracture_logits(logits)[:, 1:2], hand)
        columns = torch.tensor([4, 6, 5])
        chosen = logits.gather(1, columns[:, None]) + logits[:, 7:8]
        assert torch.allclose(shared(images, columns=columns), chosen)
    view = shared.fracture_view("wrist")
    assert all(p is q for p, q in zip(view.parameters(), shared.parameters(), strict=True))
    with pytest.raises(ValueError, match="no fracture logit for region 'knee'"):
        shared.fracture_view("knee")
    with pytest.raises(ValueError, match="needs at least one region"):
        SharedStages(nn.Identity(), ())


def test_the_loss_is_stage_1_s_plus_each_supported_image_s_own_region_s_fracture_loss() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, shared_outputs(len(REGIONS)))
    # elbow fractured, wrist not, 'unsupported' (no fracture loss), hand fractured
    targets = torch.tensor([[0, 1], [2, 0], [3, 0], [1, 1]])
    weights, pos_weight = torch.tensor([1.0, 2.0, 1.0, 0.5]), torch.tensor([3.0])
    loss = SharedStagesLoss(weights, pos_weight)(logits, targets)
    region = nn.CrossEntropyLoss(weight=weights)(logits[:, :CLASSES], targets[:, 0])
    chosen = (
        torch.stack([logits[0, 4], logits[1, 6], logits[3, 5]])[:, None] + logits[[0, 1, 3], 7:]
    )
    labels = torch.tensor([[1.0], [0.0], [1.0]])
    fracture = nn.BCEWithLogitsLoss(pos_weight=pos_weight)(chosen, labels)
    assert float(loss) == pytest.approx(float(region + fracture), abs=1e-6)
    unsupported_only = SharedStagesLoss(weights, pos_weight)(logits[2:3], targets[2:3])
    expected = nn.CrossEntropyLoss(weight=weights)(logits[2:3, :CLASSES], targets[2:3, 0])
    assert float(unsupported_only) == pytest.approx(float(expected), abs=1e-6)


def test_one_pass_gives_the_region_and_the_fracture_probability_stage_2_would(
    tmp_path: Path,
) -> None:
    """Stage 1's pass gives each region's calibrated fracture probability: the very values
    of stage 2 run on its own and of its Grad-CAM pass; each view's map is its own region's
    logit's, though one Grad-CAM pass explains views of several regions."""
    bundle = _bundle(tmp_path / "bundle")
    model = load_bundle(bundle)
    assert model.fractures_in_stage_one
    images = torch.rand(5, 1, model.image_size, model.image_size).numpy()
    calls = model.classify_regions(images)
    regions: list[str | None] = ["wrist", "elbow", None, "hand", "wrist"]
    alone = model.classify_fractures(images, regions)
    explained_probabilities, explained = model.classify_and_explain(images, regions)
    for k, region in enumerate(regions):
        if region is None:
            assert alone[k] is None and explained[k] == (None, None)
            continue
        probabilities = calls[k].fracture_probabilities
        assert probabilities is not None and set(probabilities) == set(REGIONS)
        assert probabilities[region] == pytest.approx(alone[k], abs=1e-5)
        assert explained_probabilities[k] == pytest.approx(alone[k], abs=1e-5)
        (own,) = compute_cam(
            model.fracture_networks[region],
            torch.as_tensor(images[k : k + 1]),
            "shared.network.class_layers.relu",
            0,
        )
        cam, box = explained[k]
        assert cam is not None and np.allclose(cam, own, atol=1e-5)
        assert box == hottest_box(own, BOX_FRACTION)


def test_a_shared_bundle_holds_one_network_and_refuses_the_other_form(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert "shared" in weights and "region" not in weights and "fracture" not in weights
    metadata = load_metadata(bundle)
    assert "shared backbone" in (bundle / "docs" / "README.md").read_text()
    with pytest.raises(BundleError, match="one SharedStages network and no fracture models"):
        save_bundle(tmp_path / "other", metadata, _shared(), {r: nn.Identity() for r in REGIONS})
    with pytest.raises(ValueError, match=r"region_network.out_channels is 4; expected 8"):
        metadata.model_validate(
            metadata.model_dump()
            | {"region_network": NetworkSpec(architecture="densenet-small", out_channels=4)}
        )
    two_networks = _bundle(tmp_path / "two", shared_backbone=False)
    (two_networks / "models" / "model.pt").write_bytes(
        (bundle / "models" / "model.pt").read_bytes()
    )
    with pytest.raises(BundleError, match="keys 'region' and 'fracture'"):
        load_bundle(two_networks)


def _evaluated(bundle: Path, auroc: float, data: str = "the same held-out phantoms") -> Path:
    evaluation = {
        "data": data,
        "images": 40,
        "region_accuracy": 0.9,
        "overall": {"auroc": auroc, "sensitivity_suspected": 0.95},
        "gradcam_box_hit_rate": 0.8,
    }
    update_metadata(bundle, metrics={"evaluation": evaluation, "training_seconds": 12.5})
    return bundle


def test_the_card_shows_the_other_form_s_figures_on_the_same_data_beside_its_own(
    tmp_path: Path,
) -> None:
    shared = _evaluated(_bundle(tmp_path / "shared"), auroc=0.98)
    two = _evaluated(_bundle(tmp_path / "two", shared_backbone=False), auroc=0.97)
    write_beside(shared, two)
    card = (shared / "docs" / "README.md").read_text()
    name = "untrained-test-bundle 0.1.0 (two networks)"
    assert f"### Beside {name}" in card
    assert f"| figure | this bundle (shared backbone) | {name} |" in card
    assert "| fracture AUROC, study level, true region given | 0.98 | 0.97 |" in card
    assert "| training time (s) | 12.5 | 12.5 |" in card
    other = _evaluated(_bundle(tmp_path / "other", shared_backbone=False), 0.5, "other data")
    with pytest.raises(ValueError, match="was not evaluated on the same data"):
        write_beside(shared, other)
