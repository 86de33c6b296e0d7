"""FracAtlas and GRAZPEDWRI-DX in their own files, and bundles whose regions are theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from config.domain.intended_use import HeaderFacts, header_gate
from models.runtime.bundle import BundleError, load_bundle, load_metadata, update_metadata
from models.runtime.preprocessing import display_image_from_png
from models.training.datasets import DatasetError, ImageRecord, save_png
from models.training.evaluation import evaluate_bundle
from models.training.layouts import LAYOUTS, load_records, write_phantom_dataset
from models.training.public_sets import (
    FRACATLAS_COLUMNS,
    FRACTURE_TYPE_CLASSES,
    GRAZPEDWRI_COLUMNS,
    ao_group,
    write_phantom_fracatlas,
    write_phantom_fracture_types,
    write_phantom_grazpedwri,
)
from models.training.train import train
from tests.models.conftest import tiny_train_config

FRACATLAS_REGIONS = ("hand", "hip", "lower limb", "shoulder")


def test_fracatlas_is_read_from_its_own_files(tmp_path: Path) -> None:
    root = write_phantom_fracatlas(tmp_path, per_region=4, size=64, seed=1)
    assert (root / "dataset.csv").read_text().splitlines()[0] == FRACATLAS_COLUMNS
    coco = json.loads((root / "Annotations/COCO JSON/COCO_fracture_masks.json").read_text())
    records = load_records(tmp_path, "fracatlas")  # FracAtlas's parent works too
    assert records == load_records(root, "fracatlas")
    # 4 regions x 4 images; the one 'mixed' image shows several parts and is left out.
    assert len(records) == 16 and len(coco["images"]) == 17
    assert sorted({r.region for r in records}) == list(FRACATLAS_REGIONS)
    assert len({r.patient_id for r in records}) == 16  # no patient IDs: one image each
    for record in records:
        assert record.path.parent.name == ("Fractured" if record.label else "Non_fractured")
        assert (record.box is not None) == bool(record.label)
    # COCO's bbox is x, y, width, height; a record's box is rows then columns.
    first = next(a for a in coco["annotations"])
    x, y, width, height = first["bbox"]
    name = next(i["file_name"] for i in coco["images"] if i["id"] == first["image_id"])
    record = next(r for r in records if r.path.name == name)
    assert record.box == (y, x, y + height, x + width)


def test_grazpedwri_is_read_from_its_own_files(tmp_path: Path) -> None:
    root = write_phantom_grazpedwri(tmp_path, patients=4, size=64, seed=2)
    raw = (root / "dataset.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # as published
    assert raw[3:].decode().splitlines()[0] == GRAZPEDWRI_COLUMNS
    records = load_records(root, "grazpedwri")
    assert len(records) == 8 and {r.region for r in records} == {"wrist"}
    assert len({r.study_id for r in records}) == 4  # two views per study
    assert {r.path.parent.name for r in records} == {"images_part1", "images_part2"}
    positives = [r for r in records if r.label]
    assert positives and all(r.box is not None for r in positives)
    assert all(r.box is None for r in records if not r.label)
    # The label file also holds a 'text' box; only the fracture (class 3) becomes the box.
    label = root / "folder_structure/yolov5/labels" / f"{positives[0].path.stem}.txt"
    lines = label.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["8", "3"]
    _, x, y, w, h = (float(v) for v in lines[1].split())
    box = positives[0].box
    assert box is not None
    assert np.allclose(
        box, ((y - h / 2) * 64, (x - w / 2) * 64, (y + h / 2) * 64, (x + w / 2) * 64)
    )
    image = display_image_from_png(records[0].path)  # 16-bit PNG
    assert image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0


def test_public_set_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no FracAtlas dataset\.csv"):
        load_records(tmp_path, "fracatlas")
    root = write_phantom_grazpedwri(tmp_path / "graz", patients=2, size=48)
    next((root / "images_part1").glob("*.png")).unlink()
    with pytest.raises(DatasetError, match=r"dataset\.csv:\d+: image .* is in no images_part"):
        load_records(root, "grazpedwri")
    assert {"fracatlas", "grazpedwri"} <= set(LAYOUTS)


@pytest.mark.slow
def test_a_bundle_trained_on_fracatlas_assesses_fracatlas_regions(tmp_path: Path) -> None:
    """The regions are the data's: stage 1 has FracAtlas's four plus 'unsupported', the
    intended use follows, and the header gate reads it (a knee is a 'lower limb')."""
    data = write_phantom_dataset(tmp_path / "data", "fracatlas", size=48, seed=3, patients=8)
    records = load_records(data, "fracatlas")
    bundle = train(tiny_train_config(fracture_epochs=1), records, tmp_path / "b", progress=False)
    metadata = load_metadata(bundle)
    assert metadata.regions == FRACATLAS_REGIONS
    assert metadata.region_classes == (*FRACATLAS_REGIONS, "unsupported")
    assert metadata.region_network.out_channels == 5
    assert metadata.intended_use.regions == FRACATLAS_REGIONS
    assert set(metadata.thresholds) == set(FRACATLAS_REGIONS)
    model = load_bundle(bundle)
    assert set(model.fracture_networks) == set(FRACATLAS_REGIONS)
    use = metadata.intended_use
    assert header_gate(HeaderFacts(body_part_examined="KNEE"), use).regions == {"lower limb"}
    assert header_gate(HeaderFacts(body_part_examined="HIP"), use).regions == {"hip"}
    wrist = header_gate(HeaderFacts(body_part_examined="WRIST"), use).not_assessed
    assert wrist is not None and "outside the intended use" in wrist.reason
    records = load_records(data, "fracatlas")
    metrics = evaluate_bundle(bundle, records, tmp_path / "eval", progress=False).metrics
    assert metrics["region_confusion"]["classes"] == [*FRACATLAS_REGIONS, "unsupported"]


@pytest.mark.slow
def test_a_bundle_trained_on_grazpedwri_has_one_region(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "data", "grazpedwri", size=48, seed=4, patients=8)
    bundle = train(
        tiny_train_config(), load_records(data, "grazpedwri"), tmp_path / "b", progress=False
    )
    metadata = load_metadata(bundle)
    assert metadata.regions == ("wrist",) and metadata.region_network.out_channels == 2
    assert "synthetic non-extremity phantoms" in metadata.training_data  # 'unsupported'


def test_bundle_regions_must_fit_the_network_and_the_intended_use(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "data", "grazpedwri", size=48, seed=5, patients=4)
    bundle = train(
        tiny_train_config(), load_records(data, "grazpedwri"), tmp_path / "b", progress=False
    )
    file = bundle / "configs/metadata.json"
    document = json.loads(file.read_text())
    good = document["fracture_triage"]
    for change, message in (
        ({"regions": ["wrist", "knee"]}, "out_channels is 2; expected 3"),
        ({"regions": ["wristlet"]}, "are not body parts"),
        ({"intended_use": {**good["intended_use"], "regions": ["knee"]}}, "not among regions"),
    ):
        file.write_text(json.dumps({**document, "fracture_triage": {**good, **change}}))
        with pytest.raises(BundleError, match=message):
            load_metadata(bundle)


def test_fracture_type_sets_and_ao_groups_give_types(tmp_path: Path) -> None:
    root = write_phantom_fracture_types(tmp_path / "types", per_class=2, size=48)
    records = load_records(root, "fracture-types")
    assert len(records) == 10 * 3
    assert {r.fracture_type for r in records} == set(FRACTURE_TYPE_CLASSES)
    assert {r.region for r in records} == {"extremity"} and all(r.label for r in records)
    assert sum(r.split == "test" for r in records) == 10  # the Test/ folders
    assert ao_group("23r-M/2.1; 23u-E/7") == "23r-M" and ao_group("") is None
    graz = load_records(write_phantom_grazpedwri(tmp_path / "graz", patients=4), "grazpedwri")
    assert {r.fracture_type for r in graz if r.label} == {"23r-M", "23r-E"}
    assert all(r.fracture_type is None for r in graz if not r.label)
    with pytest.raises(DatasetError, match="fracture type on an image labelled 0"):
        ImageRecord(tmp_path / "a.png", "p", "s", "wrist", 0, fracture_type="23r-M")


@pytest.mark.slow
def test_a_type_head_is_trained_evaluated_and_on_the_card(tmp_path: Path) -> None:
    root = write_phantom_fracture_types(tmp_path / "types", per_class=3, size=48, seed=6)
    records = load_records(root, "fracture-types")
    config = tiny_train_config(fracture_epochs=1)
    bundle = train(config, records, tmp_path / "bundle", progress=False)
    metadata = load_metadata(bundle)
    assert metadata.fracture_types == tuple(sorted(FRACTURE_TYPE_CLASSES))
    assert metadata.type_network is not None and metadata.type_network.out_channels == 10
    assert "fracture-type" in metadata.metrics["stages"]
    model = load_bundle(bundle)
    calls = model.classify_types(np.zeros((2, 1, 32, 32), np.float32))
    assert all(c is not None and c.name in metadata.fracture_types for c in calls)
    test = [r for r in records if r.split == "test"]
    metrics = evaluate_bundle(bundle, test, tmp_path / "eval", progress=False).metrics
    assert metrics["type_images"] == 10
    assert metrics["type_confusion"]["classes"] == list(metadata.fracture_types)
    assert np.asarray(metrics["type_confusion"]["matrix"]).sum() == 10
    assert set(metrics["type_sensitivity"]) == set(FRACTURE_TYPE_CLASSES)
    card = update_metadata(bundle, metrics={**metadata.metrics, "evaluation": metrics})
    text = (bundle / "docs" / "README.md").read_text()
    assert card.fracture_types and "### Fracture type" in text and "| true type |" in text


def test_the_csv_layout_takes_a_fracture_type_column(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        save_png(np.zeros((8, 8), np.float32), tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "path,region,label,fracture_type\na.png,wrist,1,Oblique fracture\nb.png,wrist,0,\n"
    )
    first, second = load_records(tmp_path / "labels.csv", "csv")
    assert (first.fracture_type, second.fracture_type) == ("Oblique fracture", None)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_trains_and_evaluates_on_its_fixture(layout: str, tmp_path: Path) -> None:
    """Each layout's phantom fixture, in its exact files, through `train` and `evaluate`
    (a few steps: what the commands do with the format, not what a model learns)."""
    data = write_phantom_dataset(tmp_path / "data", layout, size=48, seed=8)  # type: ignore[arg-type]
    records = load_records(data, layout)  # type: ignore[arg-type]
    bundle = train(tiny_train_config(fracture_epochs=1), records, tmp_path / "b", progress=False)
    evaluation = evaluate_bundle(bundle, records, tmp_path / "eval", progress=False)
    assert evaluation.metrics["images"] == len(records) and evaluation.report.is_file()
    boxed = [r for r in records if r.box is not None]
    if boxed:  # the layouts with boxes are scored for localisation
        assert "gradcam_detected_positives_with_box" in evaluation.metrics
