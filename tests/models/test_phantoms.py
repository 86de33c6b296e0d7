"""Phantoms: determinism, labels, DICOM round trip and sample studies."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from config import REGION_CLASSES, UNSUPPORTED
from models.runtime.preprocessing import display_image_from_dataset
from models.training.phantoms import (
    DX_FOR_PRESENTATION,
    phantom_dataset,
    render_phantom,
    write_sample_studies,
)


def test_same_seed_same_phantom() -> None:
    a = render_phantom("wrist", True, np.random.default_rng(3), size=96)
    b = render_phantom("wrist", True, np.random.default_rng(3), size=96)
    c = render_phantom("wrist", True, np.random.default_rng(4), size=96)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.break_box == b.break_box
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("region", REGION_CLASSES)
def test_phantom_contract(region: str) -> None:
    rng = np.random.default_rng(1)
    fracture = region != UNSUPPORTED
    phantom = render_phantom(region, fracture, rng, size=64)
    assert phantom.image.shape == (64, 64) and phantom.image.dtype == np.float32
    assert phantom.image.min() >= 0.0 and phantom.image.max() <= 1.0
    assert phantom.region == region and phantom.fracture == fracture
    if fracture:
        r0, c0, r1, c1 = phantom.break_box
        assert 0 <= r0 <= r1 < 64 and 0 <= c0 <= c1 < 64
    else:
        assert phantom.break_box is None


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="knee"):
        render_phantom("knee", False, rng)
    with pytest.raises(ValueError, match="unsupported"):
        render_phantom(UNSUPPORTED, True, rng)


def _dataset(phantom, photometric: str, rows: int | None = None) -> pydicom.Dataset:
    return phantom_dataset(
        phantom,
        patient_name="Test^Phantom",
        patient_id="P1",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        accession_number="A1",
        instance_number=1,
        photometric=photometric,
        rows=rows,
    )


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dataset_round_trip(photometric: str, tmp_path) -> None:
    phantom = render_phantom("hand", True, np.random.default_rng(5), size=128)
    ds = _dataset(phantom, photometric)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path)
    assert read.SOPClassUID == DX_FOR_PRESENTATION
    assert read.Modality == "DX" and read.PresentationIntentType == "FOR PRESENTATION"
    assert read.BitsStored == 12 and read.pixel_array.max() <= 4095
    assert read.BodyPartExamined == "HAND"
    display = display_image_from_dataset(read)
    assert display.shape == phantom.image.shape
    correlation = np.corrcoef(display.ravel(), phantom.image.ravel())[0, 1]
    assert correlation > 0.95
    stored = read.pixel_array.astype(float)
    bone = phantom.image > 0.5
    if photometric == "MONOCHROME1":  # bone is low in stored values
        assert stored[bone].mean() < stored[~bone].mean()
    else:
        assert stored[bone].mean() > stored[~bone].mean()


def test_dataset_resampled_rows() -> None:
    phantom = render_phantom("elbow", False, np.random.default_rng(0), size=64)
    ds = _dataset(phantom, "MONOCHROME2", rows=200)
    assert (ds.Rows, ds.Columns) == (200, 200)


def test_sample_studies_are_reproducible(tmp_path) -> None:
    first = write_sample_studies(tmp_path / "a", seed=7)
    second = write_sample_studies(tmp_path / "b", seed=7)
    assert [p.name for p in first] == [p.name for p in second]
    assert len(first) >= 3
    files = sorted(first[0].glob("*.dcm"))
    assert len(files) == 2  # the wrist study has two views
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == first[0].name
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert display_image_from_dataset(ds).shape == (ds.Rows, ds.Columns)
    other = write_sample_studies(tmp_path / "c", seed=8)
    assert other[0].name != first[0].name
