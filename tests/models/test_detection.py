"""The fracture detector: MONAI's RetinaNet without torchvision, trained, scored, bundled."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from pydantic import ValidationError

from models.runtime.bundle import load_bundle, load_metadata
from models.runtime.detection import DetectorSpec, build_detector, detect_boxes, inclusive_box
from models.training.datasets import load_csv, write_phantom_csv
from models.training.detection import detection_metrics, detection_samples, train_detector
from models.training.evaluation import evaluate_bundle
from models.training.train import train
from tests.models.conftest import tiny_train_config


def test_the_detector_runs_without_torchvision() -> None:
    """MONAI's RetinaNet reaches for torchvision in its backbone helper and its default
    matcher's type check; our extractor and ATSS override avoid both. The pin: torchvision
    is absent here (its PyPI build fails beside CPU torch), and MONAI's method we override
    still exists under its name."""
    assert importlib.util.find_spec("torchvision") is None
    assert callable(RetinaNetDetector.compute_anchor_matched_idxs)
    detector = build_detector(DetectorSpec(score_threshold=0.0, report_score=0.0))
    found = detect_boxes(detector, torch.rand(2, 1, 64, 64), min_score=0.0)
    assert len(found) == 2
    for box in found:
        assert box is not None and 0.0 <= box.score <= 1.0
        row_min, col_min, row_max, col_max = box.box
        assert 0 <= row_min <= row_max < 64 and 0 <= col_min <= col_max < 64


def test_monai_corners_become_inclusive_pixels_inside_the_image() -> None:
    assert inclusive_box([10.0, 20.0, 30.0, 40.0], 64) == (10, 20, 29, 39)
    assert inclusive_box([-3.2, 5.5, 70.0, 5.6], 64) == (0, 5, 63, 5)


def test_a_spec_that_could_never_report_a_box_is_refused_naming_the_values() -> None:
    with pytest.raises(ValidationError, match=r"report_score 0\.01 is below score_threshold 0\.02"):
        DetectorSpec(report_score=0.01)
    with pytest.raises(ValidationError, match=r"anchor_sides \[0, 8\]"):
        DetectorSpec(anchor_sides=(0, 8))


def test_trained_on_boxed_phantoms_it_is_scored_with_ap_and_froc(tmp_path: Path) -> None:
    records = [
        r for r in load_csv(write_phantom_csv(tmp_path, 6, size=64)) if r.region != "unsupported"
    ]
    samples = detection_samples(records, 64)
    assert len(samples) == len(records)  # every phantom positive has its box
    assert sum(len(s.boxes) for s in samples) == sum(r.label for r in records)
    detector = train_detector(DetectorSpec(), samples, 1, 8, 1e-3, torch.device("cpu"))
    figures = detection_metrics(detector, samples, torch.device("cpu"))
    assert figures["detector_true_boxes"] == sum(r.label for r in records)
    for key in ("detector_ap_iou_0_1", "detector_ap_iou_0_5", "detector_froc_score"):
        assert 0.0 <= figures[key] <= 1.0
    assert set(figures["detector_froc_points"]) == {
        "0.125",
        "0.25",
        "0.5",
        "1.0",
        "2.0",
        "4.0",
        "8.0",
    }


def test_samples_without_a_box_cannot_train_a_detector() -> None:
    empty = detection_samples([], 64)
    with pytest.raises(ValueError, match="no sample has a fracture box"):
        train_detector(DetectorSpec(), empty, 1, 8, 1e-3, torch.device("cpu"))


@pytest.mark.slow
def test_train_writes_a_bundle_whose_detector_the_node_and_evaluation_use(tmp_path: Path) -> None:
    labels = write_phantom_csv(tmp_path / "data", 12, size=64)
    config = tiny_train_config(image_size=64, fracture_epochs=1, detector_epochs=1)
    bundle = train(config, load_csv(labels), tmp_path / "bundle", progress=False)
    metadata = load_metadata(bundle)
    assert metadata.detector == DetectorSpec()
    assert "detector_validation" in metadata.metrics
    model = load_bundle(bundle)
    assert model.detector is not None
    assert len(model.detect(torch.rand(3, 1, 64, 64).numpy())) == 3
    evaluation = evaluate_bundle(
        bundle, load_csv(labels), tmp_path / "report", progress=False, data_description="all"
    )
    assert "detector_froc_score" in evaluation.metrics
    assert "detector_box_hit_rate" in evaluation.metrics
    assert "COCO average precision at IoU 0.1" in evaluation.report.read_text()
    assert "The detector on all" in evaluation.report.read_text()
