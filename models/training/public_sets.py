"""Public fracture data sets in their own on-disk layouts: FracAtlas and GRAZPEDWRI-DX.

Each loader reads a copy exactly as its authors publish it and returns
:class:`~models.training.datasets.ImageRecord` lists, like the MURA loader; each fixture
writer draws phantoms into the same files and folders, so the tests read the real format.

``fracatlas`` (Abedeen et al., Scientific Data 2023)
    ``FracAtlas/dataset.csv`` (``image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,
    fractured,fracture_count,frontal,lateral,oblique``; flags 0/1), the JPEGs under
    ``images/Fractured/`` and ``images/Non_fractured/``, and the boxes in
    ``Annotations/COCO JSON/COCO_fracture_masks.json`` (``bbox`` = x, y, width, height).
    Regions: hand, hip, shoulder and leg; FracAtlas's "leg" (knee, lower leg, ankle, foot,
    femur) becomes the region ``lower limb``, under which a header naming a knee falls
    (:meth:`config.domain.intended_use.IntendedUse.region_for`). Images flagged ``mixed``
    or with no single region flag show several body parts and are left out (counted in
    the log). FracAtlas has no patient identifiers, so each image is its own patient and
    study. An image with several boxes gets the box around all of them.
``grazpedwri`` (Nagy et al., Scientific Data 2022)
    ``dataset.csv`` (UTF-8 with a byte-order mark; ``filestem,patient_id,study_number,
    timehash,gender,age,laterality,projection,initial_exam,ao_classification,cast,
    diagnosis_uncertain,osteopenia,fracture_visible,metal,pixel_spacing,
    device_manufacturer``; flags ``1`` or empty), 16-bit PNGs under
    ``images_part1`` ... ``images_part4``, and YOLO labels in
    ``folder_structure/yolov5/labels/<filestem>.txt`` (``class x_centre y_centre width
    height``, normalised; class 3 is ``fracture``). One region, ``wrist``; an image is
    positive when ``fracture_visible`` is 1; a study is (patient, study number). A
    positive image's fracture type is the bone and segment of its study's first AO code
    (``23r-M/2.1`` gives ``23r-M``: distal radius, metaphysis), for the type head.
``fracture-types`` (the public "bone break classification" sets)
    One folder per fracture type (``Avulsion fracture/``, ``Comminuted fracture/`` ...),
    each with ``Train/`` and ``Test/`` (or the images directly); every image shows a
    fracture of that type. These sets name no body part and hold no image without a
    fracture, so the region is ``extremity`` and such a set alone trains a type head but
    no useful fracture network: combine it with data that has negatives (the ``csv``
    layout takes a ``fracture_type`` column). Each image is its own patient; ``Test/``
    images are the test split.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.runtime.preprocessing import RASTER_SUFFIXES
from models.training.datasets import (
    DatasetError,
    ImageRecord,
    parse_label,
    read_rows,
    save_png,
)
from models.training.phantoms import render_phantom

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

#: FracAtlas's region flags and the body part each names.
FRACATLAS_REGIONS: Mapping[str, str] = {
    "hand": "hand",
    "hip": "hip",
    "leg": "lower limb",
    "shoulder": "shoulder",
}
FRACATLAS_COLUMNS = (
    "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,"
    "frontal,lateral,oblique"
)
_FRACATLAS_DIR = "FracAtlas"
_FRACATLAS_COCO = Path("Annotations/COCO JSON/COCO_fracture_masks.json")

GRAZPEDWRI_COLUMNS = (
    "filestem,patient_id,study_number,timehash,gender,age,laterality,projection,initial_exam,"
    "ao_classification,cast,diagnosis_uncertain,osteopenia,fracture_visible,metal,"
    "pixel_spacing,device_manufacturer"
)
#: GRAZPEDWRI-DX's YOLO class of a fracture (its meta.yaml: 0 boneanomaly ... 8 text).
GRAZPEDWRI_FRACTURE_CLASS = 3
_GRAZPEDWRI_TEXT_CLASS = 8
_GRAZPEDWRI_LABELS = Path("folder_structure/yolov5/labels")
_GRAZPEDWRI_IMAGES = re.compile(r"images_part\d+")


def _union(boxes: Sequence[Box]) -> Box | None:
    """The box around all ``boxes`` (row_min, col_min, row_max, col_max), or None."""
    if not boxes:
        return None
    rows_min, cols_min, rows_max, cols_max = zip(*boxes, strict=True)
    return (min(rows_min), min(cols_min), max(rows_max), max(cols_max))


# ----------------------------------------------------------------------------- FracAtlas


def _fracatlas_root(path: Path) -> Path:
    """The folder holding FracAtlas's ``dataset.csv`` (``FracAtlas`` or its parent given)."""
    for candidate in (path, path / _FRACATLAS_DIR):
        if (candidate / "dataset.csv").is_file():
            return candidate
    raise DatasetError(f"{path} holds no FracAtlas dataset.csv (nor {_FRACATLAS_DIR}/dataset.csv)")


def _coco_boxes(file: Path) -> dict[str, Box]:
    """Per image file name, the box around its COCO ``bbox`` annotations (rows, columns)."""
    if not file.is_file():
        raise DatasetError(f"FracAtlas annotations {file} do not exist")
    try:
        coco = json.loads(file.read_text())
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        boxes: dict[str, list[Box]] = {}
        for annotation in coco["annotations"]:
            x, y, width, height = (float(v) for v in annotation["bbox"])
            name = names[annotation["image_id"]]
            boxes.setdefault(name, []).append((y, x, y + height, x + width))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{file} is not COCO JSON with images and bbox annotations") from error
    return {name: box for name, parts in boxes.items() if (box := _union(parts)) is not None}


def _fracatlas_image(root: Path, name: str, fractured: bool) -> Path:
    """Where FracAtlas keeps an image: by its label, under ``images``."""
    return root / "images" / ("Fractured" if fractured else "Non_fractured") / name


def _fracatlas_region(row: Mapping[str, str]) -> str | None:
    """The body part of a row that shows exactly one of FracAtlas's regions, else None."""
    flagged = [flag for flag in FRACATLAS_REGIONS if row.get(flag) == "1"]
    if row.get("mixed") == "1" or len(flagged) != 1:
        return None
    return FRACATLAS_REGIONS[flagged[0]]


def load_fracatlas(path: str | Path) -> list[ImageRecord]:
    """Records of a FracAtlas copy (see the module docstring for what is read and left out).

    Raises
    ------
    DatasetError
        For a missing CSV, column, image or annotation file, or a bad flag (named).
    """
    root = _fracatlas_root(Path(path))
    csv_file = root / "dataset.csv"
    boxes = _coco_boxes(root / _FRACATLAS_COCO)
    records, mixed = [], 0
    for line, row in enumerate(read_rows(csv_file, header=True), start=2):
        assert isinstance(row, dict)
        where = f"{csv_file}:{line}"
        if not row.get("image_id") or "fractured" not in row:
            raise DatasetError(f"{where}: columns image_id and fractured are needed")
        region = _fracatlas_region(row)
        if region is None:
            mixed += 1
            continue
        label = parse_label(row["fractured"], where)
        file = _fracatlas_image(root, row["image_id"], bool(label))
        if not file.is_file():
            raise DatasetError(f"{where}: image {file} does not exist")
        patient = f"fracatlas:{Path(row['image_id']).stem}"
        box = boxes.get(row["image_id"]) if label else None
        records.append(ImageRecord(file, patient, patient, region, label, box))
    logger.info(
        "FracAtlas at %s: %d images; %d showing several body parts left out",
        root,
        len(records),
        mixed,
    )
    return records


def write_phantom_fracatlas(
    out_dir: str | Path, per_region: int = 6, size: int = 96, seed: int = 0
) -> Path:
    """Phantoms in FracAtlas's exact files: ``dataset.csv``, JPEGs, COCO boxes.

    FracAtlas's regions are drawn with the phantom of a look-alike (a hip as an elbow, a
    leg as a forearm): the fixture tests the format and the regions, not the anatomy.
    Half of each region's images are fractured, with a box; one more image is ``mixed``.

    Returns
    -------
    pathlib.Path
        The ``FracAtlas`` folder.
    """
    stand_in = {"hand": "hand", "hip": "elbow", "leg": "forearm", "shoulder": "shoulder"}
    root = Path(out_dir) / _FRACATLAS_DIR
    rng = np.random.default_rng(seed)
    lines, images, annotations = [FRACATLAS_COLUMNS], [], []
    for number, (flag, drawn) in enumerate(
        [(flag, drawn) for flag, drawn in stand_in.items() for _ in range(per_region)]
        + [("mixed", "hand")]
    ):
        fracture = number % 2 == 1
        phantom = render_phantom(drawn, fracture, rng, size=size)
        name = f"IMG{number:07d}.jpg"
        save_png(phantom.image, _fracatlas_image(root, name, fracture))
        flags = {
            column: int(column == flag) for column in ("hand", "leg", "hip", "shoulder", "mixed")
        }
        if flag == "mixed":
            flags.update(hand=1, leg=1)
        lines.append(
            f"{name},{flags['hand']},{flags['leg']},{flags['hip']},{flags['shoulder']},"
            f"{flags['mixed']},0,0,{int(fracture)},{int(fracture)},1,0,0"
        )
        images.append({"id": number, "file_name": name, "height": size, "width": size})
        if fracture and phantom.break_box is not None:
            row_min, col_min, row_max, col_max = phantom.break_box
            bbox = [col_min, row_min, col_max - col_min, row_max - row_min]
            annotations.append(
                {"id": len(annotations), "image_id": number, "category_id": 1, "bbox": bbox,
                 "area": bbox[2] * bbox[3], "iscrowd": 0, "segmentation": []}
            )  # fmt: skip
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    coco = root / _FRACATLAS_COCO
    coco.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "fractured"}]
    coco.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


# ----------------------------------------------------------------------------- GRAZPEDWRI-DX


def _yolo_box(line: str, width: int, height: int, where: str) -> Box | None:
    """A YOLO line's box in source pixels (rows, columns) when it is a fracture, else None."""
    cells = line.split()
    if not cells:
        return None
    try:
        label, x_centre, y_centre, box_width, box_height = int(cells[0]), *map(float, cells[1:5])
    except (ValueError, TypeError) as error:
        raise DatasetError(f"{where}: {line!r} is not 'class x y width height'") from error
    if label != GRAZPEDWRI_FRACTURE_CLASS:
        return None
    return (
        (y_centre - box_height / 2) * height,
        (x_centre - box_width / 2) * width,
        (y_centre + box_height / 2) * height,
        (x_centre + box_width / 2) * width,
    )


def _grazpedwri_box(labels_dir: Path, image: Path, stem: str) -> Box | None:
    """The box around an image's fracture labels (None without a label file or fracture)."""
    file = labels_dir / f"{stem}.txt"
    if not file.is_file():
        return None
    with Image.open(image) as opened:
        width, height = opened.size
    boxes = [_yolo_box(line, width, height, str(file)) for line in file.read_text().splitlines()]
    return _union([box for box in boxes if box is not None])


def _grazpedwri_images(root: Path) -> dict[str, Path]:
    """Every PNG of the ``images_part*`` folders by file stem."""
    folders = [d for d in root.iterdir() if d.is_dir() and _GRAZPEDWRI_IMAGES.fullmatch(d.name)]
    if not folders:
        raise DatasetError(f"{root} has no images_part* folders (GRAZPEDWRI-DX)")
    return {png.stem: png for folder in folders for png in folder.glob("*.png")}


def load_grazpedwri(path: str | Path) -> list[ImageRecord]:
    """Records of a GRAZPEDWRI-DX copy (see the module docstring).

    Raises
    ------
    DatasetError
        For a missing CSV, column, image or a malformed label line (named).
    """
    root = Path(path)
    csv_file = root / "dataset.csv"
    images = _grazpedwri_images(root)
    records = []
    for line, row in enumerate(read_rows(csv_file, header=True), start=2):
        assert isinstance(row, dict)
        where = f"{csv_file}:{line}"
        for column in ("filestem", "patient_id", "study_number"):
            if not row.get(column):
                raise DatasetError(f"{where}: column {column!r} is missing or empty")
        image = images.get(row["filestem"])
        if image is None:
            raise DatasetError(f"{where}: image {row['filestem']}.png is in no images_part folder")
        label = parse_label(row.get("fracture_visible") or "0", where)
        patient = f"grazpedwri:{row['patient_id']}"
        box = _grazpedwri_box(root / _GRAZPEDWRI_LABELS, image, row["filestem"]) if label else None
        study = f"{patient}/{row['study_number']}"
        kind = ao_group(row.get("ao_classification", "")) if label else None
        records.append(ImageRecord(image, patient, study, "wrist", label, box, fracture_type=kind))
    logger.info("GRAZPEDWRI-DX at %s: %d images", root, len(records))
    return records


def ao_group(classification: str) -> str | None:
    """The bone and segment of the first AO code (``23r-M/2.1; 23u-E/7`` -> ``23r-M``)."""
    first = classification.split(";")[0].strip()
    return first.split("/")[0].strip() or None


@dataclass(frozen=True)
class _Wrist:
    """One phantom wrist view of the GRAZPEDWRI-DX fixture."""

    patient: int
    study: int
    projection: int
    fracture: bool

    @property
    def ao(self) -> str:
        """Two AO groups, so the fixture's type head has two classes."""
        return ("23r-M/2.1" if self.patient % 4 == 0 else "23r-E/2.1") if self.fracture else ""

    @property
    def stem(self) -> str:
        timehash = 1297860395 + 40 * (10 * self.patient + self.projection)
        return f"{self.patient:04d}_{timehash:010d}_{self.study:02d}_WRI-L{self.projection}_M012"

    def csv_line(self) -> str:
        visible = "1" if self.fracture else ""
        ao = self.ao
        timehash = int(self.stem.split("_")[1])
        return (
            f"{self.stem},{self.patient},{self.study},{timehash},M,12.4,L,{self.projection},1,"
            f"{ao},,,,{visible},,0.144,Siemens"
        )


def write_phantom_grazpedwri(
    out_dir: str | Path, patients: int = 8, size: int = 96, seed: int = 0
) -> Path:
    """Phantom wrists in GRAZPEDWRI-DX's exact files (CSV with BOM and CRLF, 16-bit PNGs
    in two ``images_part`` folders, YOLO labels with fracture and text boxes).

    Each patient has one study of two views (projections 1 and 2), both fractured or not.

    Returns
    -------
    pathlib.Path
        The data set's root folder.
    """
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    labels_dir = root / _GRAZPEDWRI_LABELS
    labels_dir.mkdir(parents=True, exist_ok=True)
    lines = [GRAZPEDWRI_COLUMNS]
    for patient in range(1, patients + 1):
        for projection in (1, 2):
            view = _Wrist(patient, 1, projection, fracture=patient % 2 == 0)
            phantom = render_phantom("wrist", view.fracture, rng, size=size)
            folder = root / f"images_part{1 + patient % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(np.clip(phantom.image, 0.0, 1.0) * 65535.0).astype(np.uint16)
            Image.fromarray(pixels).save(folder / f"{view.stem}.png")
            yolo = [f"{_GRAZPEDWRI_TEXT_CLASS} 0.4375 0.197881 0.075704 0.102542"]
            if view.fracture and phantom.break_box is not None:
                row_min, col_min, row_max, col_max = (v / size for v in phantom.break_box)
                yolo.append(
                    f"{GRAZPEDWRI_FRACTURE_CLASS} {(col_min + col_max) / 2:.6f} "
                    f"{(row_min + row_max) / 2:.6f} {col_max - col_min:.6f} {row_max - row_min:.6f}"
                )
            (labels_dir / f"{view.stem}.txt").write_text("\n".join(yolo))
            lines.append(view.csv_line())
    (root / "dataset.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    return root


# ----------------------------------------------------------------------------- fracture types

#: The classes of the public ten-class "bone break classification" sets.
FRACTURE_TYPE_CLASSES = (
    "Avulsion fracture", "Comminuted fracture", "Fracture Dislocation", "Greenstick fracture",
    "Hairline Fracture", "Impacted fracture", "Longitudinal fracture", "Oblique fracture",
    "Pathological fracture", "Spiral Fracture",
)  # fmt: skip


def load_fracture_types(path: str | Path) -> list[ImageRecord]:
    """Records of a class-per-folder fracture-type set (see the module docstring).

    Raises
    ------
    DatasetError
        If the folder holds no class folder with images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"fracture-type folder {root} does not exist")
    records = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES):
            held_out = "test" in (part.lower() for part in image.relative_to(folder).parts[:-1])
            patient = f"types:{folder.name}/{image.relative_to(folder).as_posix()}"
            records.append(
                ImageRecord(
                    image, patient, patient, "extremity", 1,
                    split="test" if held_out else None, fracture_type=folder.name,
                )
            )  # fmt: skip
    if not records:
        raise DatasetError(f"{root} has no class folders with PNG or JPEG images")
    logger.info("fracture-type set at %s: %d images", root, len(records))
    return records


def write_phantom_fracture_types(
    out_dir: str | Path, per_class: int = 4, size: int = 96, seed: int = 0
) -> Path:
    """Fractured phantoms in the ten-class layout: ``<class>/Train/`` and one per class in
    ``<class>/Test/``. The phantoms do not differ by type: the fixture tests the layout
    and the type head's plumbing, not what a type looks like.

    Returns
    -------
    pathlib.Path
        The set's root folder.
    """
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    drawn = ("forearm", "wrist", "hand", "humerus", "elbow")
    for number, name in enumerate(FRACTURE_TYPE_CLASSES):
        for k in range(per_class + 1):
            phantom = render_phantom(drawn[(number + k) % len(drawn)], True, rng, size=size)
            split = "Test" if k == per_class else "Train"
            save_png(phantom.image, root / name / split / f"{number:02d}_{k:03d}.jpg")
    return root
