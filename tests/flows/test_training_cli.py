"""The training toolkit's commands: make-phantom-dataset, evaluate (train is tested in models/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from models.bundle import load_bundle
from models.datasets import load_records

runner = CliRunner()


@pytest.mark.parametrize("layout", ["mura", "csv", "dicom"])
def test_make_phantom_dataset_writes_a_loadable_layout(layout: str, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["make-phantom-dataset", "--layout", layout, "--out", str(tmp_path), "--size", "48"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path if layout == "dicom" else tmp_path / "labels.csv"
    records = load_records(tmp_path if layout == "mura" else path, layout)  # type: ignore[arg-type]
    assert records


def test_unknown_layout_is_named(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["make-phantom-dataset", "--layout", "nifti", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "nifti" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--layout", "mura", "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "MURA-v1.1" in result.output


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
