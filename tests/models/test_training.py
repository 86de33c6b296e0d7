"""The demo bundle trained once per session: loading, held-out metrics, Grad-CAM boxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from config.domain.findings import OperatingPoints
from models.runtime.bundle import BundleError, load_bundle
from models.runtime.gradcam import compute_cam, hottest_box
from models.runtime.inference import BOX_FRACTION, HierarchicalModel, fracture_probability
from models.runtime.networks import gradcam_target_layer
from models.runtime.preprocessing import preprocess
from models.training.config import INTENDED_USE
from models.training.evaluation import box_contains
from models.training.metrics import auroc
from models.training.operating_points import pick_operating_points
from models.training.phantoms import PhantomSplit, render_phantom

pytestmark = pytest.mark.slow


def test_metadata_says_synthetic(demo_model: HierarchicalModel, demo_bundle_dir: Path) -> None:
    metadata = demo_model.metadata
    assert metadata.trained_on_synthetic_data is True
    assert metadata.name == "fracture-triage-demo" and metadata.version == "0.1.0"
    assert metadata.intended_use.statement == INTENDED_USE
    assert metadata.metrics["val_region_accuracy"] >= 0.9
    # The demo is evaluated on its held-out test split; the model card shows it.
    evaluation = metadata.metrics["evaluation"]
    assert evaluation["region_accuracy"] >= 0.9 and evaluation["overall"]["auroc"] >= 0.9
    assert evaluation["gradcam_box_hit_rate"] >= 0.8
    # The time is recorded for the model card; the budget itself is a benchmark, not a test.
    assert metadata.metrics["training_seconds"] > 0
    card = (demo_bundle_dir / "docs" / "README.md").read_text()
    assert "NOT for clinical use" in card
    assert "## Evaluation" in card and (demo_bundle_dir / "docs" / "roc.png").is_file()
    for region in REGIONS:
        suspected, likely = demo_model.thresholds_for(region)
        assert 0.0 <= suspected <= likely <= 1.0
    with pytest.raises(ValueError, match="knee"):
        demo_model.thresholds_for("knee")


def test_held_out_region_accuracy(demo_model: HierarchicalModel, held_out: PhantomSplit) -> None:
    predictions = demo_model.predict(held_out.images, explain=False)
    predicted = [
        REGION_CLASSES.index(p.region) if p.region else REGION_CLASSES.index(UNSUPPORTED)
        for p in predictions
    ]
    accuracy = float(np.mean(np.asarray(predicted) == held_out.regions))
    assert accuracy >= 0.9, accuracy


def test_held_out_fracture_auroc(demo_model: HierarchicalModel, held_out: PhantomSplit) -> None:
    aurocs = []
    for label, region in enumerate(REGIONS):
        idx = np.nonzero(held_out.regions == label)[0]
        network = demo_model.fracture_networks[region]
        with torch.no_grad():
            scores = fracture_probability(network(held_out.images[idx])).numpy()
        aurocs.append(auroc(held_out.fractures[idx], scores))
    assert float(np.mean(aurocs)) >= 0.9, dict(zip(REGIONS, aurocs, strict=True))


def test_unsupported_phantoms_get_no_region(demo_model: HierarchicalModel) -> None:
    rng = np.random.default_rng(99)
    images = np.stack(
        [
            preprocess(render_phantom(UNSUPPORTED, False, rng).image, demo_model.image_size)[0]
            for _ in range(16)
        ]
    )
    predictions = demo_model.predict(images)
    none = [p for p in predictions if p.region is None]
    assert len(none) >= 14
    assert all(p.fracture_probability is None and p.cam is None and p.box is None for p in none)


def test_gradcam_box_finds_the_break(demo_model: HierarchicalModel, held_out: PhantomSplit) -> None:
    positives = np.nonzero(held_out.fractures == 1)[0]
    predictions = demo_model.predict(held_out.images[positives])
    hits, detected, areas = 0, 0, []
    size = demo_model.image_size
    for index, prediction in zip(positives, predictions, strict=True):
        if prediction.region is None or prediction.fracture_probability is None:
            continue
        suspected, _ = demo_model.thresholds_for(prediction.region)
        if prediction.fracture_probability < suspected:
            continue
        assert prediction.cam.shape == (size, size) and prediction.cam.max() <= 1.0
        detected += 1
        hits += box_contains(prediction.box, held_out.boxes[index])
        r0, c0, r1, c1 = prediction.box
        areas.append((r1 - r0 + 1) * (c1 - c0 + 1) / size**2)
    assert detected >= 0.8 * len(positives)
    assert hits / detected >= 0.8, (hits, detected)
    # Boxes come from an 8x8 feature map, so they are coarse (about a quarter of the
    # image on average), but they must not be the whole image.
    assert float(np.mean(areas)) < 0.4, float(np.mean(areas))


def test_prediction_levels(demo_model: HierarchicalModel) -> None:
    rng = np.random.default_rng(5)
    image, _ = preprocess(render_phantom("forearm", True, rng).image, demo_model.image_size)
    prediction = demo_model.predict(image[None])[0]
    assert prediction.region == "forearm"
    assert set(prediction.region_probabilities) == set(REGION_CLASSES)
    suspected, likely = demo_model.thresholds_for("forearm")
    points = OperatingPoints(suspected=suspected, likely=likely)
    assert points.level(prediction.fracture_probability).is_positive


def test_bad_batch_is_rejected(demo_model: HierarchicalModel) -> None:
    with pytest.raises(ValueError, match="preprocess"):
        demo_model.predict(np.zeros((1, 1, 10, 10), dtype=np.float32))


def test_incomplete_bundles_name_the_problem(demo_bundle_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_bundle_dir, broken)
    (broken / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"model\.pt"):
        load_bundle(broken)
    shutil.copytree(demo_bundle_dir, broken, dirs_exist_ok=True)
    metadata_file = broken / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata["fracture_triage"]["image_size"]
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="image_size"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing")


def test_operating_points_and_auroc_helpers() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    scores = np.concatenate([np.linspace(0.0, 0.5, 20), np.linspace(0.4, 1.0, 20)])
    suspected, likely = pick_operating_points(labels, scores)
    assert (scores[labels == 1] >= suspected).mean() >= 0.95
    assert (scores[labels == 0] < likely).mean() >= 0.95
    assert suspected <= likely
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert box_contains((0, 0, 10, 10), (4, 4, 6, 6))
    assert not box_contains((0, 0, 3, 3), (4, 4, 6, 6))


def test_large_batches_are_split_without_changing_any_result(
    demo_bundle_dir: Path, held_out: PhantomSplit
) -> None:
    """Micro-batches (cheaper per image on a CPU) give the very results of one big pass."""
    images = held_out.images[:23].numpy()
    whole = load_bundle(demo_bundle_dir, max_batch=64)
    split = load_bundle(demo_bundle_dir, max_batch=4)
    assert (whole.max_batch, split.max_batch) == (64, 4)
    for a, b in zip(whole.predict(images), split.predict(images), strict=True):
        assert a.region == b.region and a.box == b.box
        assert a.fracture_probability == pytest.approx(b.fracture_probability, abs=1e-5)
        if a.cam is not None:
            assert np.allclose(a.cam, b.cam, atol=1e-5)
    with pytest.raises(ValueError, match="max_batch"):
        load_bundle(demo_bundle_dir, max_batch=0)


def test_one_pass_gives_stage_2_and_its_grad_cam(
    demo_model: HierarchicalModel, held_out: PhantomSplit
) -> None:
    """The explained forward pass yields the very probabilities of a separate no-grad pass,
    and the very maps of a Grad-CAM computed on its own."""
    images = held_out.images[:12].numpy()
    regions = [call.region for call in demo_model.classify_regions(images)]
    fractures, explained = demo_model.classify_and_explain(images, regions)
    assert fractures == pytest.approx(demo_model.classify_fractures(images, regions), abs=1e-5)
    layer = gradcam_target_layer(demo_model.metadata.fracture_network)
    for k, (region, (cam, box)) in enumerate(zip(regions, explained, strict=True)):
        assert (cam is None) == (region is None)
        if region is not None:
            (alone,) = compute_cam(
                demo_model.fracture_networks[region],
                held_out.images[k : k + 1],
                layer,
                demo_model.fracture_class,
            )
            assert np.allclose(cam, alone, atol=1e-5)
            assert box == hottest_box(alone, BOX_FRACTION)
