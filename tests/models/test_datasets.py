"""Data sources: MURA layout, generic CSV, DICOM folder; splits by patient; one preprocessing."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from models.training.datasets import (
    DatasetError,
    ImageRecord,
    load_dicom_folder,
    load_record_image,
    split_by_patient,
    write_phantom_csv,
    write_phantom_dicom_folder,
    write_phantom_mura,
)
from models.training.layouts import load_records


@pytest.fixture(scope="module")
def mura_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_mura(tmp_path_factory.mktemp("mura"), (4, 2), size=48, seed=3)


def test_mura_layout_is_exact(mura_dir: Path) -> None:
    assert mura_dir.name == "MURA-v1.1"
    for split in ("train", "valid"):
        images = (mura_dir / f"{split}_image_paths.csv").read_text().split()
        studies = list(csv.reader((mura_dir / f"{split}_labeled_studies.csv").open()))
        # No header: the first line is already data.
        assert images[0].startswith(f"MURA-v1.1/{split}/XR_")
        assert studies[0][0].endswith("/") and studies[0][1] in ("0", "1")
        for line in images:
            parts = line.split("/")
            assert parts[2].startswith("XR_") and parts[3].startswith("patient")
            assert parts[4].split("_")[1] in ("positive", "negative")
            assert parts[5].startswith("image") and parts[5].endswith(".png")
            assert (mura_dir.parent / line).is_file()


def test_mura_loads_with_study_labels_and_regions(mura_dir: Path) -> None:
    records = load_records(mura_dir, "mura")
    assert load_records(mura_dir.parent, "mura") == records  # either folder works
    train_lines = (mura_dir / "train_image_paths.csv").read_text().split()
    valid_lines = (mura_dir / "valid_image_paths.csv").read_text().split()
    assert len(records) == len(train_lines) + len(valid_lines)
    assert {r.region for r in records} == set(REGIONS)
    assert sum(r.split == "test" for r in records) == len(valid_lines)
    labels: dict[str, set[int]] = defaultdict(set)
    for record in records:
        labels[record.study_id].add(record.label)
        # The label is the study folder's suffix; the region its XR_ folder.
        assert record.label == int(record.path.parent.name.endswith("_positive"))
        assert record.path.parts[-4] == f"XR_{record.region.upper()}"
        assert record.patient_id == record.path.parts[-3]
    assert all(len(values) == 1 for values in labels.values())
    studies = (mura_dir / "train_labeled_studies.csv").read_text().split()
    studies += (mura_dir / "valid_labeled_studies.csv").read_text().split()
    assert len(labels) == len(studies)


def test_split_by_patient_never_shares_a_patient(mura_dir: Path) -> None:
    records = load_records(mura_dir, "mura")
    splits = split_by_patient(records, val_fraction=0.25, seed=1)
    patients = {name: {r.patient_id for r in split} for name, split in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(s) for s in splits.values()) == len(records)
    # MURA's valid split stays the test split; train is divided into train and val.
    assert {r.path for r in splits["test"]} == {r.path for r in records if r.split == "test"}
    assert splits["train"] and splits["val"]
    assert all(r.split == name for name, split in splits.items() for r in split)
    # Reproducible with the seed.
    assert split_by_patient(records, 0.25, seed=1) == splits


def test_split_without_fixed_splits_and_bad_fractions(tmp_path: Path) -> None:
    records = [
        ImageRecord(tmp_path / f"{p}-{i}.png", f"p{p}", f"s{p}", "hand", i % 2)
        for p in range(20)
        for i in range(3)
    ]
    splits = split_by_patient(records, 0.2, 0.2, seed=0)
    assert [len({r.patient_id for r in splits[n]}) for n in ("train", "val", "test")] == [12, 4, 4]
    with pytest.raises(DatasetError, match=r"1\.5"):
        split_by_patient(records, 1.5)


def test_csv_layout_with_boxes(tmp_path: Path) -> None:
    labels = write_phantom_csv(tmp_path, per_class=4, size=48, seed=0)
    records = load_records(labels, "csv")
    assert load_records(tmp_path, "csv") == records
    assert len(records) == 4 * len(REGION_CLASSES)
    positives = [r for r in records if r.label]
    assert len(positives) == 2 * len(REGIONS)
    assert all(r.box is not None for r in positives)
    assert all(r.box is None for r in records if not r.label)
    assert {r.region for r in records} == set(REGION_CLASSES)
    labels.write_text("path,region,label\nimages/x.png,knee,1\n")
    with pytest.raises(DatasetError, match=r"x\.png"):
        load_records(labels, "csv")


def test_dicom_folder_with_labels_csv(tmp_path: Path) -> None:
    labels = write_phantom_dicom_folder(tmp_path, patients_per_region=2, size=48, rows=96)
    records = load_records(tmp_path, "dicom")
    assert len(records) == 2 * 2 * len(REGION_CLASSES)
    assert {r.region for r in records} == set(REGION_CLASSES)
    for record in records:
        ds = pydicom.dcmread(record.path, stop_before_pixels=True)
        assert record.patient_id == ds.PatientID and record.study_id == ds.StudyInstanceUID
        expected = 0 if record.region == UNSUPPORTED else int(ds.PatientID.endswith(("0", "2")))
        assert record.label == expected
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([*rows, "1.2.3.4,,hand,1"]) + "\n")
    with pytest.raises(DatasetError, match=r"1\.2\.3\.4"):
        load_dicom_folder(tmp_path)


def test_png_and_dicom_reach_the_same_distribution(tmp_path: Path) -> None:
    """The same phantom as an 8-bit PNG and as 12/16-bit DICOM gives the same model input."""
    labels = write_phantom_dicom_folder(tmp_path, patients_per_region=1, size=64, rows=64)
    dicom_records = load_records(tmp_path, "dicom")
    assert labels.is_file()
    record = dicom_records[0]
    ds = pydicom.dcmread(record.path)
    dicom_input, _ = load_record_image(record, 64)
    # Render the same pixels as an 8-bit display PNG (what MURA ships).
    from models.runtime.preprocessing import display_image_from_dataset

    display = display_image_from_dataset(ds)
    png = tmp_path / "same.png"
    from PIL import Image

    Image.fromarray(np.round(display * 255).astype(np.uint8)).save(png)
    png_record = ImageRecord(png, "x", "x", record.region, record.label)
    png_input, _ = load_record_image(png_record, 64)
    assert dicom_input.shape == png_input.shape == (1, 64, 64)
    assert abs(float(dicom_input.mean())) < 1e-4 and abs(float(png_input.mean())) < 1e-4
    assert float(np.abs(dicom_input - png_input).max()) < 0.05


def test_records_validate_their_fields(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="kneecap"):
        ImageRecord(tmp_path / "a.png", "p", "s", "kneecap", 0)
    # Any body part may be a bundle's region (FracAtlas has knees), not only MURA's seven.
    assert ImageRecord(tmp_path / "a.png", "p", "s", "knee", 1).region == "knee"
    with pytest.raises(DatasetError, match="label 2"):
        ImageRecord(tmp_path / "a.png", "p", "s", "hand", 2)
    with pytest.raises(DatasetError, match="unknown layout"):
        load_records(tmp_path, "nifti")  # type: ignore[arg-type]
