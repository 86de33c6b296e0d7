"""End-to-end evaluation: each study decided as the node does, with stage 1's region."""

from __future__ import annotations

from pathlib import Path

from config.domain.decision import ViewResult
from config.domain.findings import Gate, NotAssessed, OperatingPoints
from models.training.datasets import ImageRecord
from models.training.end_to_end import decide_studies, end_to_end_metrics

POINTS = {"wrist": OperatingPoints(suspected=0.3, likely=0.7)} | {
    "elbow": OperatingPoints(suspected=0.3, likely=0.7)
}


def view(study: str, label: int, **result: object) -> tuple[ImageRecord, ViewResult]:
    record = ImageRecord(Path(f"{study}.png"), f"patient-{study}", study, "wrist", label)
    return record, ViewResult(f"{study}.png", **result)  # type: ignore[arg-type]


def test_a_misrouted_or_not_assessed_positive_is_a_miss() -> None:
    gated = NotAssessed(Gate.PIXELS, "outside what the model was trained on")
    views = [
        view("a-found", 1, region="wrist", region_probability=0.9, fracture_probability=0.9),
        # A fracture flagged under the elbow: a miss for a wrist study, however sure.
        view("b-misrouted", 1, region="elbow", region_probability=0.6, fracture_probability=0.95),
        view("c-gated", 1, region_probability=0.4, not_assessed=gated),
        # A negative wrist flagged as an elbow fracture: a false positive all the same.
        view("d-false-flag", 0, region="elbow", region_probability=0.5, fracture_probability=0.8),
        view("e-clear", 0, region="wrist", region_probability=0.9, fracture_probability=0.1),
    ]
    metrics = end_to_end_metrics(decide_studies(views, POINTS, "mean"))
    assert metrics["studies"] == 5 and metrics["positives"] == 3
    assert metrics["not_assessed"] == 1 and metrics["misrouted"] == 2
    assert metrics["confusion_suspected"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 2}
    assert metrics["sensitivity_suspected"] == round(1 / 3, 4)
    assert metrics["specificity_likely"] == 0.5  # the false flag is 'likely' too
