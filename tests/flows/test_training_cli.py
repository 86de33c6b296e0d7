"""The training toolkit's commands: make-phantom-dataset, train, evaluate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from config import Settings
from config.domain.intended_use import HeaderFacts, header_gate
from db.migrate import upgrade
from db.models import StudyStatus
from db.repositories import RunRepository
from flows.cli.app import app
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_study
from models.runtime.bundle import load_bundle, load_metadata
from models.runtime.preprocessing import preprocess
from models.training.layouts import load_records
from models.training.phantoms import render_phantom
from models.training.splits import PatientSplits
from tests.flows.conftest import store_study

runner = CliRunner()


@pytest.mark.parametrize(
    ("layout", "images", "patients"),
    [
        ("mura", None, 7 * (3 + 1)),
        ("csv", 8 * 3, 8 * 3),
        ("dicom", 8 * 3 * 2, 8 * 3),
        ("fracatlas", 4 * 3, 4 * 3),  # four regions; the 'mixed' image is left out
        ("grazpedwri", 3 * 2, 3),  # two views each
    ],
)
def test_make_phantom_dataset_writes_a_loadable_layout(
    layout: str, images: int | None, patients: int, tmp_path: Path
) -> None:
    options = ["--layout", layout, "--out", str(tmp_path), "--size", "48", "--patients", "3"]
    result = runner.invoke(app, ["make-phantom-dataset", *options])
    assert result.exit_code == 0, result.output
    path = tmp_path / "labels.csv" if layout == "csv" else tmp_path
    records = load_records(path, layout)  # type: ignore[arg-type]
    assert images is None or len(records) == images
    assert len({r.patient_id for r in records}) == patients


def test_a_paediatric_data_set_gives_a_paediatric_intended_use(tmp_path: Path) -> None:
    """GRAZPEDWRI-DX's children: the bundle assesses 0 to 19 years, not adults only; and
    its YOLO fracture boxes train a detector when asked (``--detector-epochs``)."""
    data, bundle = tmp_path / "data", tmp_path / "bundle"
    options = ["--layout", "grazpedwri", "--out", str(data), "--size", "48", "--patients", "6"]
    assert runner.invoke(app, ["make-phantom-dataset", *options]).exit_code == 0
    tiny = ["--preset", "phantom", "--image-size", "32", "--epochs", "1"]
    source = ["--data", str(data), "--layout", "grazpedwri", "--max-steps-per-epoch", "1"]
    detector = ["--detector-epochs", "1"]
    result = runner.invoke(app, ["train", *source, *tiny, *detector, "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    assert load_metadata(bundle).detector is not None
    use = load_metadata(bundle).intended_use
    assert (use.min_age_years, use.max_age_years, use.regions) == (None, 19.0, ("wrist",))
    adult = header_gate(HeaderFacts(body_part_examined="WRIST", age_years=30.0), use)
    assert adult.not_assessed is not None and "older than 19" in adult.not_assessed.reason
    ages = ["--max-age", "9", "--min-age", "12", "--out", str(tmp_path / "none")]
    result = runner.invoke(app, ["train", *source, *tiny, *ages])
    assert result.exit_code == 2 and "below min_age_years" in result.output


def test_unknown_test_time_augmentation_is_named(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path), "--layout", "csv", "--split", "all"]
    result = runner.invoke(
        app,
        [
            "evaluate",
            *data,
            "--bundle",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--tta",
            "rotate",
        ],
    )
    assert result.exit_code == 2 and "rotate" in result.output


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
    beside = ["--beside", str(tmp_path / "other")]
    result = runner.invoke(
        app, ["evaluate", *data, "--bundle", str(tmp_path / "b"), "--out", str(tmp_path), *beside]
    )
    assert result.exit_code == 2 and "add --write-card" in result.output.replace("\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["--two-networks", "--shared-backbone"])
def test_phantom_preset_train_then_evaluate_meets_the_bars(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    form: str,
) -> None:
    """The issue's bar through the commands a user runs: phantoms, train, evaluate, load;
    for both forms of the stages (two networks, one shared network)."""
    data, bundle, report = tmp_path / "data", tmp_path / "bundle", tmp_path / "report"
    options = ["--layout", "csv", "--out", str(data), "--patients", "300", "--seed", "3"]
    result = runner.invoke(app, ["make-phantom-dataset", *options])
    assert result.exit_code == 0, result.output
    source = ["--data", str(data / "labels.csv"), "--layout", "csv"]
    for command in (
        ["train", "--preset", "phantom", form, *source, "--out", str(bundle)],
        ["evaluate", "--bundle", str(bundle), *source, "--out", str(report), "--write-card"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output

    model = load_bundle(bundle)
    assert model.metadata.shared_backbone == (form == "--shared-backbone")
    metrics = model.metadata.metrics["evaluation"]
    held_out = PatientSplits.read(bundle)
    assert held_out is not None
    assert metrics["images"] == held_out.count("test") >= 150  # the patients training held out
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

    # The bundle predicts: a fractured forearm phantom it has never seen.
    phantom = render_phantom("forearm", True, np.random.default_rng(2024), size=256)
    image, _ = preprocess(phantom.image, model.image_size)
    prediction = model.predict(image[None])[0]
    assert prediction.region == "forearm"
    assert prediction.fracture_probability is not None and prediction.box is not None
    assert prediction.fracture_probability >= model.thresholds_for("forearm")[0]

    # And the node runs it: the triage flow on a stored DICOM study, outputs and all.
    runtime = Runtime.create(make_settings(model_bundle_dir=bundle))
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:
        study_uid = store_study(runtime, sample_studies[0])
        with flow_run_settings(False):
            summary = triage_study(study_uid)
    finally:
        install_runtime(None)
    assert summary.status == StudyStatus.TRIAGED.value
    assert summary.region == "wrist" and summary.undelivered == 0
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(study_uid)
        assert run is not None and (run.model_name, run.model_version) == (
            model.metadata.name,
            model.metadata.version,
        )
        assert {o.kind for o in run.outputs} >= {"sr", "summary", "sc"}


@pytest.mark.slow
def test_mura_preset_trains_on_the_mura_layout_with_the_chosen_operating_points(
    tmp_path: Path,
) -> None:
    """MURA's own command (DenseNet121, the mura preset) on phantoms in MURA's exact layout.

    A few steps only: this proves the path a site with MURA on disk runs (folders and
    CSVs, labels per study, the production network, the options), not the accuracy,
    which the phantom preset's test and the model card hold.
    """
    data, bundle = tmp_path / "mura", tmp_path / "bundle"
    options = ["--layout", "mura", "--out", str(data), "--size", "96", "--patients", "2"]
    result = runner.invoke(app, ["make-phantom-dataset", *options])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "train", "--data", str(data), "--layout", "mura", "--out", str(bundle),
            "--preset", "mura", "--image-size", "64", "--epochs", "1",
            "--max-steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu",
            "--aggregation", "max", "--sensitivity-target", "0.9",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = load_bundle(bundle).metadata
    assert metadata.fracture_network.architecture == "densenet121"
    assert metadata.region_network.architecture == "densenet121"
    assert metadata.image_size == 64
    assert metadata.study_aggregation == "max"
    assert "mura data set" in metadata.training_data
    assert not metadata.trained_on_synthetic_data  # the mura preset: real data by default
    assert set(metadata.thresholds) == set(metadata.regions)
    splits = PatientSplits.read(bundle)
    assert splits is not None
    # MURA's valid split is kept as the test split; no patient is in two splits.
    valid = {r.patient_id for r in load_records(data, "mura") if r.split == "test"}
    assert valid and splits.count("test") == len(valid)
    assert all(splits.contains("test", patient) for patient in valid)
    members = splits.members
    assert not (members["train"] & members["val"]) and not (members["train"] & members["test"])


@pytest.mark.slow
def test_evaluate_command_leaves_the_card_alone_unless_asked_and_never_for_seen_patients(
    demo_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    card = (bundle / "docs" / "README.md").read_text()
    data = tmp_path / "data"
    runner.invoke(app, ["make-phantom-dataset", "--layout", "csv", "--out", str(data)])
    evaluate = ["evaluate", "--bundle", str(bundle), "--data", str(data / "labels.csv")]
    evaluate += ["--layout", "csv", "--split", "all", "--out", str(tmp_path / "report")]
    result = runner.invoke(app, evaluate)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "roc.png").is_file()
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["region_accuracy"] >= 0.9
    assert (bundle / "docs" / "README.md").read_text() == card  # not asked: not written
    # The phantom data set's patient IDs are the ones the demo bundle was trained on.
    result = runner.invoke(app, [*evaluate, "--write-card"])
    assert result.exit_code == 2
    assert "training or validation split" in result.output.replace("\n", " ")
    assert (bundle / "docs" / "README.md").read_text() == card
    assert load_bundle(bundle).metadata.metrics == load_bundle(demo_bundle).metadata.metrics
