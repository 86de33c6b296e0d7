"""The training toolkit's commands: make-phantom-dataset, train, evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from models.bundle import load_bundle
from models.datasets import load_records
from models.phantoms import render_phantom
from models.preprocessing import preprocess

runner = CliRunner()


@pytest.mark.parametrize(
    ("layout", "images", "patients"),
    [("mura", None, 7 * (3 + 1)), ("csv", 8 * 3, 8 * 3), ("dicom", 8 * 3 * 2, 8 * 3)],
)
def test_make_phantom_dataset_writes_a_loadable_layout(
    layout: str, images: int | None, patients: int, tmp_path: Path
) -> None:
    options = ["--layout", layout, "--out", str(tmp_path), "--size", "48", "--patients", "3"]
    result = runner.invoke(app, ["make-phantom-dataset", *options])
    assert result.exit_code == 0, result.output
    path = tmp_path if layout == "dicom" else tmp_path / "labels.csv"
    records = load_records(tmp_path if layout == "mura" else path, layout)  # type: ignore[arg-type]
    assert images is None or len(records) == images
    assert len({r.patient_id for r in records}) == patients


def test_unknown_layout_is_named(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["make-phantom-dataset", "--layout", "nifti", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "nifti" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--layout", "mura", "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "MURA-v1.1" in result.output


def test_unknown_preset_and_unrecorded_split_are_named(tmp_path: Path) -> None:
    runner.invoke(app, ["make-phantom-dataset", "--layout", "csv", "--out", str(tmp_path)])
    data = ["--data", str(tmp_path / "labels.csv"), "--layout", "csv"]
    result = runner.invoke(app, ["train", *data, "--preset", "imagenet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "imagenet" in result.output
    result = runner.invoke(
        app, ["evaluate", *data, "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "splits.json" in result.output.replace("\n", "")


@pytest.mark.slow
def test_phantom_preset_train_then_evaluate_meets_the_bars(tmp_path: Path) -> None:
    """The issue's bar through the commands a user runs: phantoms, train, evaluate, load."""
    data, bundle, report = tmp_path / "data", tmp_path / "bundle", tmp_path / "report"
    options = ["--layout", "csv", "--out", str(data), "--patients", "300", "--seed", "3"]
    result = runner.invoke(app, ["make-phantom-dataset", *options])
    assert result.exit_code == 0, result.output
    source = ["--data", str(data / "labels.csv"), "--layout", "csv"]
    for command in (
        ["train", "--preset", "phantom", *source, "--out", str(bundle)],
        ["evaluate", "--bundle", str(bundle), *source, "--out", str(report)],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output

    model = load_bundle(bundle)
    metrics = model.metadata.metrics["evaluation"]
    held_out = json.loads((bundle / "training" / "splits.json").read_text())["test"]
    assert metrics["images"] == len(held_out) >= 150  # the patients training held out
    assert metrics["region_accuracy"] >= 0.9, metrics["region_accuracy"]
    assert metrics["overall"]["auroc"] >= 0.9, metrics["overall"]
    assert metrics["gradcam_detected_positives_with_box"] >= 50
    assert metrics["gradcam_box_hit_rate"] >= 0.8, metrics["gradcam_box_hit_rate"]
    for name in ("report.md", "metrics.json", "roc.png", "reliability.png"):
        assert (report / name).is_file(), name
    assert (bundle / "docs" / "roc.png").is_file()
    card = (bundle / "docs" / "README.md").read_text()
    assert "NOT for clinical use" in card and "## Evaluation" in card
    assert "![roc](roc.png)" in card
    assert model.metadata.trained_on_synthetic_data

    # The node runs the bundle: a fractured forearm phantom it has never seen.
    phantom = render_phantom("forearm", True, np.random.default_rng(2024), size=256)
    image, _ = preprocess(phantom.image, model.image_size)
    prediction = model.predict(image[None])[0]
    assert prediction.region == "forearm"
    assert prediction.fracture_probability is not None and prediction.box is not None
    assert prediction.fracture_probability >= model.thresholds_for("forearm")[0]


@pytest.mark.slow
def test_evaluate_command_writes_report_into_a_loadable_bundle(
    demo_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    data = tmp_path / "data"
    runner.invoke(app, ["make-phantom-dataset", "--layout", "csv", "--out", str(data)])
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--bundle",
            str(bundle),
            "--data",
            str(data / "labels.csv"),
            "--layout",
            "csv",
            "--split",
            "all",
            "--out",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "roc.png").is_file()
    model = load_bundle(bundle)
    assert model.metadata.metrics["evaluation"]["region_accuracy"] >= 0.9
    assert "## Evaluation" in (bundle / "docs" / "README.md").read_text()
