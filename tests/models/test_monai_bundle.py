"""Bundles in the MONAI Bundle specification's terms: metadata that MONAI's verifier
accepts, and an inference config ``python -m monai.bundle run`` runs on one image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import verify_metadata

from models.runtime.bundle import load_bundle, load_metadata
from models.runtime.monai_spec import NAMESPACE
from models.runtime.preprocessing import display_image_from_png, preprocess, preprocess_dicom_file
from models.training.datasets import save_png
from models.training.phantoms import render_phantom
from tests.bundles import build_test_bundle

SCHEMA = Path(__file__).parent / "data" / "monai_metadata_schema.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_bundle(tmp_path_factory.mktemp("spec") / "bundle")


def test_metadata_passes_monais_verifier_and_keeps_our_keys_apart(bundle: Path) -> None:
    metadata_file = bundle / "configs" / "metadata.json"
    # The schema is kept in the tests: the verifier uses the file instead of downloading.
    verify_metadata(meta_file=str(metadata_file), filepath=str(SCHEMA))
    document = json.loads(metadata_file.read_text())
    ours = load_metadata(bundle)
    assert document["version"] == ours.version and document["monai_version"] == ours.monai_version
    outputs = document["network_data_format"]["outputs"]
    assert list(outputs["pred"]["channel_def"].values()) == list(ours.region_classes)
    assert document["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    assert "NOT for clinical use" in document["intended_use"]  # trained on nothing real
    assert document[NAMESPACE]["thresholds"].keys() == ours.thresholds.keys()
    # Our keys are not mixed into the specification's level.
    assert "thresholds" not in document and "pixel_gate" not in document


def test_verifier_rejects_metadata_without_the_required_keys(bundle: Path, tmp_path: Path) -> None:
    document = json.loads((bundle / "configs" / "metadata.json").read_text())
    del document["network_data_format"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA))


def test_files_written_before_the_namespace_still_load(bundle: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    (flat / "configs").mkdir(parents=True)
    document = json.loads((bundle / "configs" / "metadata.json").read_text())
    (flat / "configs" / "metadata.json").write_text(json.dumps(document[NAMESPACE]))
    assert load_metadata(flat) == load_metadata(bundle)


@pytest.mark.parametrize(
    ("kind", "shared_backbone"), [("dicom", False), ("png", False), ("dicom", True)]
)
def test_monai_bundle_run_classifies_an_image_as_the_node_does(
    bundle: Path, sample_studies: list[Path], tmp_path: Path, kind: str, shared_backbone: bool
) -> None:
    if shared_backbone:  # the one-network form runs through the same config
        bundle = build_test_bundle(tmp_path / "shared", shared_backbone=True)
    model = load_bundle(bundle)
    if kind == "dicom":
        image = sample_studies[0] / "001.dcm"
        tensor, _ = preprocess_dicom_file(image, model.image_size)  # the node's loader
    else:
        image = tmp_path / "wrist.png"
        save_png(render_phantom("wrist", True, np.random.default_rng(5), size=200).image, image)
        tensor, _ = preprocess(display_image_from_png(image), model.image_size)
    output = tmp_path / "prediction.json"
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle), "--image", str(image), "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    call = model.classify_regions(tensor[None])[0]
    assert result["region"] == call.region == "wrist"  # the test bundle's rigged stage 1
    for name, probability in call.probabilities.items():
        assert result["region_probabilities"][name] == pytest.approx(probability, abs=1e-6)
    fracture = model.classify_fractures(tensor[None], [call.region])[0]
    assert result["fracture_probability"] == pytest.approx(fracture, abs=1e-6)
    assert result["trained_on_synthetic_data"] is True
