"""Training data sources: MURA v1.1, a generic CSV layout and DICOM folders, one record type.

Every source becomes a list of :class:`ImageRecord` (image path, patient, study, region,
label, optional fracture box). Splits are made by *patient* (:func:`split_by_patient`), so
no patient ever has images on both sides of a train/validation/test boundary.

Layouts
-------
``mura``
    ``MURA-v1.1/{train,valid}/XR_<REGION>/patientNNNNN/studyN_{positive,negative}/imageN.png``
    with ``{train,valid}_image_paths.csv`` (one image path per line) and
    ``{train,valid}_labeled_studies.csv`` (``study_dir/,label``), both without header and
    relative to the folder that contains ``MURA-v1.1``. Labels are per study; the region is
    ``XR_<REGION>`` lower-cased. MURA's ``valid`` split (its public test split) is kept as
    our ``test`` split; ``train`` is split by patient into train and validation.
``csv``
    A CSV file with a header: ``path`` (relative to the CSV's folder or absolute),
    ``region`` (a body part of :data:`config.domain.anatomy.BODY_PARTS` or
    ``unsupported``), ``label`` (0/1) and optionally
    ``patient_id``, ``study_id``, ``split``, ``fracture_type`` (positive rows) and a
    fracture box ``row_min, col_min, row_max, col_max`` in source pixels. Without
    ``patient_id`` each image counts as its own patient, and without ``study_id`` each
    image is its own study.
``dicom``
    A folder of DICOM files (any depth) plus a labels CSV with a header: ``label``, one of
    ``sop_instance_uid`` or ``file`` (relative to the folder) and optionally ``region``;
    without a region column the region comes from Body Part Examined. Patient and study
    come from Patient ID and Study Instance UID.

Why 8-bit PNGs and 12-16 bit DICOM end up in the same distribution
-------------------------------------------------------------------
Loading goes through exactly the functions the node uses at inference. A PNG (MURA,
FracAtlas) was already rendered for display when it was exported, so
:func:`models.runtime.preprocessing.display_image_from_png` only divides by 255. A DICOM image
carries 12-16 bit stored values plus the instructions to display them, so
:func:`models.runtime.preprocessing.display_image_from_dataset` applies them as a viewer does
(Modality LUT, VOI LUT or window, MONOCHROME1 inversion) and scales the window to
[0, 1]. Both end as "what the radiologist saw", bone bright, in [0, 1]; then the same
:func:`models.runtime.preprocessing.preprocessing_transform` fits the image to the square input
and standardises it per image (zero mean, unit variance), which removes the remaining
brightness and contrast differences between 8-bit exports and DICOM windows. Training
and inference therefore see one distribution whatever the bit depth of the source.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.transforms import MapTransform, Transform
from PIL import Image

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from config.domain.anatomy import BODY_PARTS, part_of_term
from models.runtime.preprocessing import (
    Geometry,
    display_image_from_file,
    preprocess,
)
from models.training.phantoms import phantom_dataset, render_phantom, seeded_uids

logger = logging.getLogger(__name__)

#: Split names; ``None`` on a record means "not assigned by the source".
SPLITS: tuple[str, ...] = ("train", "val", "test")

_MURA_DIR = "MURA-v1.1"
_MURA_PATH = re.compile(
    r"(?P<split>train|valid)/XR_(?P<region>[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+_(?:positive|negative))/?"
)
_BOX_COLUMNS = ("row_min", "col_min", "row_max", "col_max")


class DatasetError(ValueError):
    """A data source is missing a file, a column or holds a bad value (named in the message)."""


@dataclass(frozen=True)
class ImageRecord:
    """One training/evaluation image.

    Attributes
    ----------
    path
        PNG or DICOM file.
    patient_id
        Patient identifier (the unit of splitting).
    study_id
        Study identifier, unique across the data set (the unit of labels in MURA and of
        the study-level decision).
    region
        A body part of :data:`config.domain.anatomy.BODY_PARTS` or ``"unsupported"``
        (an image of none of the regions a bundle may assess).
    label
        1 fracture / abnormal, 0 not.
    box
        Fracture box ``(row_min, col_min, row_max, col_max)`` in source pixels, or None.
    split
        ``"train"``, ``"val"``, ``"test"`` when the source fixes it, else None.
    fracture_type
        The fracture's type where the source names one (a positive image only), e.g.
        an AO group of GRAZPEDWRI-DX or a class folder of the fracture-type layout.
    """

    path: Path
    patient_id: str
    study_id: str
    region: str
    label: int
    box: tuple[float, float, float, float] | None = None
    split: str | None = None
    fracture_type: str | None = None

    def __post_init__(self) -> None:
        if not is_known_region(self.region):
            raise DatasetError(
                f"{self.path}: region {self.region!r} is neither {UNSUPPORTED!r} nor a body "
                f"part of {sorted(BODY_PARTS)}"
            )
        if self.label not in (0, 1):
            raise DatasetError(f"{self.path}: label {self.label!r} is not 0 or 1")
        if self.region == UNSUPPORTED and self.label:
            raise DatasetError(f"{self.path}: an 'unsupported' image cannot be labelled 1")
        if self.fracture_type is not None and not self.label:
            raise DatasetError(f"{self.path}: a fracture type on an image labelled 0")
        if self.split is not None and self.split not in SPLITS:
            raise DatasetError(f"{self.path}: split {self.split!r} is not one of {SPLITS}")


def is_known_region(region: str) -> bool:
    """Whether a record's region is one a bundle may have, or 'unsupported'."""
    return region == UNSUPPORTED or region in BODY_PARTS


def data_regions(records: Iterable[ImageRecord]) -> tuple[str, ...]:
    """The regions the records show, in name order: a bundle trained on them has these."""
    return tuple(sorted({r.region for r in records} - {UNSUPPORTED}))


# ----------------------------------------------------------------------------- loading


def load_display_image(path: str | Path) -> np.ndarray:
    """Display-rendered image in [0, 1] (bone bright) from a PNG/JPEG or a DICOM file.

    Reads it with :func:`models.runtime.preprocessing.display_image_from_file`, as the
    node's ``monai.bundle run`` entry does.

    Raises
    ------
    DatasetError
        If the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist")
    return display_image_from_file(path)


def load_record_image(record: ImageRecord, size: int) -> tuple[np.ndarray, Geometry]:
    """Load and preprocess one record: ``((1, size, size) float32, Geometry)``."""
    return preprocess(load_display_image(record.path), size)


class LoadRecordImage(Transform):
    """Array transform: image path -> preprocessed model input (1, size, size).

    Parameters
    ----------
    size
        Side of the square model input.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, path: str | Path) -> np.ndarray:  # type: ignore[override]
        """Load ``path`` with :func:`load_display_image` and :func:`preprocess` it."""
        return preprocess(load_display_image(path), self.size)[0]


class LoadRecordImaged(MapTransform):
    """Dictionary wrapper of :class:`LoadRecordImage` (replaces the path by the image)."""

    def __init__(self, keys: Any, size: int) -> None:
        super().__init__(keys)
        self.load = LoadRecordImage(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        """Apply :class:`LoadRecordImage` to each key."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.load(out[key])
        return out


def record_dicts(
    records: Sequence[ImageRecord], classes: Sequence[str], types: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """MONAI data dictionaries: ``image`` (path), ``region`` (index in stage 1's
    ``classes``), ``fracture`` (0/1), ``type`` (index in ``types``, -1 without one)."""
    return [
        {
            "image": str(r.path),
            "region": classes.index(r.region),
            "fracture": np.float32(r.label),
            "type": types.index(r.fracture_type) if r.fracture_type in types else -1,
        }
        for r in records
    ]


def data_fracture_types(records: Iterable[ImageRecord]) -> tuple[str, ...]:
    """The fracture types the records name, in name order (a type head's classes)."""
    return tuple(sorted({r.fracture_type for r in records if r.fracture_type is not None}))


# ----------------------------------------------------------------------------- sources


def read_rows(path: Path, header: bool) -> list[list[str]] | list[dict[str, str]]:
    """A CSV's rows: dicts by lower-cased column (``header``) or lists of cells, trimmed.

    A UTF-8 byte-order mark (GRAZPEDWRI-DX's ``dataset.csv`` has one) is dropped.
    """
    if not path.is_file():
        raise DatasetError(f"CSV file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if header:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DatasetError(f"CSV file {path} is empty")
            return [
                {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                for row in reader
            ]
        return [[cell.strip() for cell in row] for row in csv.reader(handle) if row]


def parse_label(value: str, where: str) -> int:
    """A 0/1 label from the ways sources write it (errors name ``where``)."""
    text = value.strip().lower()
    if text in ("1", "1.0", "true", "yes", "positive", "abnormal", "fracture", "fractured"):
        return 1
    if text in ("0", "0.0", "false", "no", "negative", "normal"):
        return 0
    raise DatasetError(f"{where}: label {value!r} is not 0/1 (or positive/negative)")


def _mura_root(path: Path) -> Path:
    """The folder that contains ``MURA-v1.1`` (paths in MURA's CSVs are relative to it)."""
    path = Path(path)
    if path.name == _MURA_DIR:
        return path.parent
    if (path / _MURA_DIR).is_dir():
        return path
    raise DatasetError(f"{path} is neither {_MURA_DIR} nor a folder that contains it")


def _mura_study_labels(root: Path, split: str) -> dict[str, int]:
    labels: dict[str, int] = {}
    studies_csv = root / _MURA_DIR / f"{split}_labeled_studies.csv"
    for line, row in enumerate(read_rows(studies_csv, header=False), start=1):
        if len(row) < 2:
            raise DatasetError(f"{studies_csv}:{line}: expected 'study_dir,label', got {row}")
        labels[row[0].rstrip("/")] = parse_label(row[1], f"{studies_csv}:{line}")
    return labels


def _load_mura_split(root: Path, split: str) -> list[ImageRecord]:
    """Records of MURA's ``train`` or ``valid`` split (the latter as our ``test``)."""
    labels = _mura_study_labels(root, split)
    images_csv = root / _MURA_DIR / f"{split}_image_paths.csv"
    records = []
    for line, row in enumerate(read_rows(images_csv, header=False), start=1):
        relative = row[0]
        match = _MURA_PATH.search(relative)
        if match is None:
            raise DatasetError(
                f"{images_csv}:{line}: path {relative!r} does not follow "
                f"{_MURA_DIR}/<split>/XR_<REGION>/patientN/studyN_<positive|negative>/"
            )
        region = match["region"].lower()
        if region not in REGIONS:
            raise DatasetError(
                f"{images_csv}:{line}: region XR_{match['region']} is not one of {REGIONS}"
            )
        study_dir = relative[: match.end()].rstrip("/")
        if study_dir not in labels:
            raise DatasetError(f"{images_csv}:{line}: study {study_dir!r} has no label")
        file = root / relative
        if not file.is_file():
            raise DatasetError(f"{images_csv}:{line}: image {file} does not exist")
        records.append(
            ImageRecord(
                path=file,
                patient_id=match["patient"],
                study_id=f"{split}/XR_{match['region']}/{match['patient']}/{match['study']}",
                region=region,
                label=labels[study_dir],
                split="test" if split == "valid" else None,
            )
        )
    return records


def load_mura(path: str | Path) -> list[ImageRecord]:
    """Records of a MURA v1.1 copy (both splits).

    Parameters
    ----------
    path
        ``MURA-v1.1`` itself or the folder that contains it.

    Returns
    -------
    list of ImageRecord
        ``train`` images with ``split=None`` (split by patient later), ``valid`` images
        with ``split="test"``. Study ids are ``<split>/XR_<REGION>/patientN/studyN_x``.

    Raises
    ------
    DatasetError
        For a missing CSV or image, an unknown region, a path that does not follow the
        layout, or an image whose study has no label.
    """
    root = _mura_root(Path(path))
    records = [r for split in ("train", "valid") for r in _load_mura_split(root, split)]
    logger.info("MURA at %s: %d images", root, len(records))
    return records


def _box(row: Mapping[str, str], where: str) -> tuple[float, float, float, float] | None:
    values = [row.get(column, "") for column in _BOX_COLUMNS]
    if not any(values):
        return None
    try:
        box = tuple(float(v) for v in values)
    except ValueError as error:
        raise DatasetError(f"{where}: fracture box {values} is not four numbers") from error
    if box[2] < box[0] or box[3] < box[1]:
        raise DatasetError(f"{where}: fracture box {box} has max below min")
    return box  # type: ignore[return-value]


def _labelled_record(
    row: Mapping[str, str], where: str, file: Path, patient: str, study: str, region: str
) -> ImageRecord:
    """One labels row's record, its label and box checked (errors name ``where``; a
    region no bundle may have is refused by :class:`ImageRecord`, naming the file)."""
    return ImageRecord(
        path=file,
        patient_id=patient,
        study_id=study,
        region=region,
        label=parse_label(row["label"], where),
        box=_box(row, where),
        split=row.get("split") or None,
        fracture_type=row.get("fracture_type") or None,
    )


def load_csv(path: str | Path) -> list[ImageRecord]:
    """Records of a generic CSV layout (see the module docstring for the columns).

    Raises
    ------
    DatasetError
        For a missing column, file, bad label, region or box (each named with its line).
    """
    path = Path(path)
    rows = read_rows(path, header=True)
    records = []
    for line, row in enumerate(rows, start=2):
        assert isinstance(row, dict)
        where = f"{path}:{line}"
        for column in ("path", "region", "label"):
            if not row.get(column):
                raise DatasetError(f"{where}: column {column!r} is missing or empty")
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise DatasetError(f"{where}: image {file} does not exist")
        patient = row.get("patient_id") or f"image:{row['path']}"
        study = row.get("study_id") or f"{patient}/{row['path']}"
        records.append(_labelled_record(row, where, file, patient, study, row["region"].lower()))
    logger.info("CSV %s: %d images", path, len(records))
    return records


@dataclass(frozen=True)
class _DicomFolder:
    """The DICOM files of a folder (headers only), by SOP Instance UID and by relative path."""

    root: Path
    by_uid: dict[str, tuple[Path, pydicom.Dataset]]
    by_file: dict[str, tuple[Path, pydicom.Dataset]]

    @classmethod
    def index(cls, root: Path, labels_file: Path) -> _DicomFolder:
        folder = cls(root, {}, {})
        for file in sorted(p for p in root.rglob("*") if p.is_file() and p != labels_file):
            if file.suffix.lower() in (".csv", ".txt", ".md", ".json"):
                continue
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                logger.debug("skipping non-DICOM file %s", file)
                continue
            folder.by_uid[str(ds.get("SOPInstanceUID", ""))] = (file, ds)
            folder.by_file[file.relative_to(root).as_posix()] = (file, ds)
        return folder

    def find(self, row: Mapping[str, str], where: str) -> tuple[Path, pydicom.Dataset]:
        """The file a labels row names by ``sop_instance_uid`` or by ``file``."""
        if row.get("sop_instance_uid"):
            found = self.by_uid.get(row["sop_instance_uid"])
            key = f"SOP Instance UID {row['sop_instance_uid']}"
        elif row.get("file"):
            found = self.by_file.get(Path(row["file"]).as_posix())
            key = f"file {row['file']}"
        else:
            raise DatasetError(f"{where}: needs a 'sop_instance_uid' or a 'file' column")
        if found is None:
            raise DatasetError(f"{where}: {key} is not in {self.root}")
        return found


def _body_part_region(ds: pydicom.Dataset, where: str) -> str:
    """The region Body Part Examined names, read with the domain's vocabulary (the node's
    header gate reads it the same way); a generic or unknown term names none."""
    body_part = str(ds.get("BodyPartExamined", ""))
    part = part_of_term(body_part) if body_part.strip() else None
    if part is None or part.generic:
        raise DatasetError(
            f"{where}: no region column and Body Part Examined {body_part!r} names no one "
            "body part (e.g. WRIST, HUMERUS, KNEE)"
        )
    return part.name


def load_dicom_folder(path: str | Path, labels_csv: str | Path | None = None) -> list[ImageRecord]:
    """Records of a DICOM folder labelled by a CSV (``labels.csv`` in the folder by default).

    Raises
    ------
    DatasetError
        For a missing labels CSV/column, a labelled instance not found in the folder,
        or a region that is neither given nor derivable from Body Part Examined.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"DICOM folder {root} does not exist")
    labels_file = Path(labels_csv) if labels_csv is not None else root / "labels.csv"
    rows = read_rows(labels_file, header=True)
    folder = _DicomFolder.index(root, labels_file)
    records = []
    for line, row in enumerate(rows, start=2):
        assert isinstance(row, dict)
        where = f"{labels_file}:{line}"
        if not row.get("label"):
            raise DatasetError(f"{where}: column 'label' is missing or empty")
        file, ds = folder.find(row, where)
        region = (row.get("region") or "").lower() or _body_part_region(ds, where)
        patient = str(ds.get("PatientID", "")) or f"file:{file.name}"
        study = str(ds.get("StudyInstanceUID", "")) or f"file:{file.name}"
        records.append(_labelled_record(row, where, file, patient, study, region))
    logger.info("DICOM folder %s: %d labelled images", root, len(records))
    return records


# ----------------------------------------------------------------------------- splits


def split_by_patient(
    records: Sequence[ImageRecord],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[ImageRecord]]:
    """Split records into train/val/test by patient, never by image.

    A patient with any record whose source fixes the split (e.g. MURA's ``valid``) goes
    wholly to that split. The other patients are shuffled with ``seed`` and divided by
    the fractions; if the source fixes a test split, ``test_fraction`` is not used.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each record carrying its split.

    Raises
    ------
    DatasetError
        If the fractions are outside [0, 1) or sum to 1 or more.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"{name} {value} is outside [0, 1)")
    fixed: dict[str, str] = {}
    for record in records:
        if record.split is not None:
            previous = fixed.setdefault(record.patient_id, record.split)
            # A patient split two ways by the source: the held-out side wins.
            if previous != record.split and "test" in (previous, record.split):
                fixed[record.patient_id] = "test"
    has_test = "test" in fixed.values()
    if val_fraction + (0.0 if has_test else test_fraction) >= 1.0:
        raise DatasetError(f"val_fraction {val_fraction} + test_fraction {test_fraction} >= 1")
    free = sorted({r.patient_id for r in records} - set(fixed))
    random.Random(seed).shuffle(free)
    n_val = round(len(free) * val_fraction)
    n_test = 0 if has_test else round(len(free) * test_fraction)
    assigned = dict(fixed)
    for k, patient in enumerate(free):
        assigned[patient] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    splits: dict[str, list[ImageRecord]] = {name: [] for name in SPLITS}
    for record in records:
        split = assigned[record.patient_id]
        splits[split].append(replace(record, split=split))
    logger.info("split by patient: %s", {k: len(v) for k, v in splits.items()})
    return splits


def region_counts(records: Iterable[ImageRecord]) -> dict[str, dict[str, int]]:
    """Images per region and label: ``{region: {"negative": n, "positive": n}}``."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        entry = counts.setdefault(record.region, {"negative": 0, "positive": 0})
        entry["positive" if record.label else "negative"] += 1
    return counts


# ----------------------------------------------------------------------------- fixtures


def save_png(image: np.ndarray, path: Path) -> None:
    """An image in [0, 1] as an 8-bit grayscale PNG (or JPEG, by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)


def write_unsupported_phantoms(
    out_dir: Path, count: int, size: int, seed: int
) -> list[ImageRecord]:
    """PNGs of ``count`` 'unsupported' phantoms (one patient each), kept if already written.

    Stage 1 needs non-extremity images; :func:`models.training.train.train` adds these when
    the data has none (MURA).
    """
    rng = np.random.default_rng(seed)
    records = []
    for k in range(count):
        path = out_dir / f"unsupported_{k:05d}.png"
        if not path.is_file():
            save_png(render_phantom(UNSUPPORTED, False, rng, size=size).image, path)
        patient = f"synthetic-unsupported-{k:05d}"
        records.append(ImageRecord(path, patient, patient, UNSUPPORTED, 0))
    return records


def write_phantom_mura(
    out_dir: str | Path,
    patients_per_region: tuple[int, int] = (8, 3),
    size: int = 96,
    seed: int = 0,
) -> Path:
    """Write phantom PNGs in MURA v1.1's exact folders and CSVs.

    Each patient has one or two studies; each study one to three views, all positive or
    all negative (labels are per study, as in MURA). Patient numbers are unique across
    splits and regions, as in MURA.

    Parameters
    ----------
    out_dir
        Folder in which ``MURA-v1.1`` is created.
    patients_per_region
        Patients per region in ``train`` and in ``valid``.
    size
        Side of the phantom PNGs.
    seed
        Seed of the phantoms and of the study structure.

    Returns
    -------
    pathlib.Path
        The ``MURA-v1.1`` folder.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    mura = out_dir / _MURA_DIR
    patient_number = 0
    for split, patients in zip(("train", "valid"), patients_per_region, strict=True):
        image_lines, study_lines = [], []
        for region in REGIONS:
            for _ in range(patients):
                patient_number += 1
                patient = f"patient{patient_number:05d}"
                for study in range(1, int(rng.integers(1, 3)) + 1):
                    positive = bool(rng.integers(0, 2))
                    name = f"study{study}_{'positive' if positive else 'negative'}"
                    study_dir = f"{_MURA_DIR}/{split}/XR_{region.upper()}/{patient}/{name}/"
                    study_lines.append(f"{study_dir},{int(positive)}")
                    for view in range(1, int(rng.integers(1, 4)) + 1):
                        phantom = render_phantom(region, positive, rng, size=size)
                        relative = f"{study_dir}image{view}.png"
                        save_png(phantom.image, out_dir / relative)
                        image_lines.append(relative)
        (mura / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n")
        (mura / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n")
    logger.info("wrote a phantom MURA layout to %s", mura)
    return mura


def write_phantom_csv(
    out_dir: str | Path, per_class: int = 20, size: int = 96, seed: int = 0
) -> Path:
    """Write phantom PNGs plus ``labels.csv`` in the generic CSV layout (with break boxes).

    Every class of :data:`config.REGION_CLASSES` gets ``per_class`` images (half of the
    supported ones fractured, box given), one image per patient as in FracAtlas.

    Returns
    -------
    pathlib.Path
        The ``labels.csv`` file.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    lines = ["path,region,label,patient_id,row_min,col_min,row_max,col_max"]
    for region in REGION_CLASSES:
        for k in range(per_class):
            fracture = region != UNSUPPORTED and k % 2 == 1
            phantom = render_phantom(region, fracture, rng, size=size)
            relative = f"images/{region}_{k:04d}.png"
            save_png(phantom.image, out_dir / relative)
            box = ",".join(str(v) for v in phantom.break_box) if phantom.break_box else ",,,"
            lines.append(f"{relative},{region},{int(fracture)},{region}-{k:04d},{box}")
    labels = out_dir / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def write_phantom_dicom_folder(
    out_dir: str | Path,
    patients_per_region: int = 2,
    size: int = 96,
    rows: int = 192,
    seed: int = 0,
) -> Path:
    """Write phantom DX DICOM files (12-bit, MONOCHROME1 and 2) and a labels CSV.

    Each patient has one study with two views, both fractured or both not. The labels CSV
    names half the instances by SOP Instance UID and half by file, and gives the region
    for odd rows only (the others must come from Body Part Examined). Unsupported
    phantoms get their own patients.

    Returns
    -------
    pathlib.Path
        The ``labels.csv`` file (inside ``out_dir``).
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    uid = seeded_uids(seed)
    lines = ["sop_instance_uid,file,region,label"]
    line = 0
    for region in REGION_CLASSES:
        for k in range(patients_per_region):
            patient = f"PHANTOM-{region.upper()}-{k:03d}"
            study_uid, series_uid = uid(), uid()
            fracture = region != UNSUPPORTED and k % 2 == 0
            for view in (1, 2):
                phantom = render_phantom(region, fracture, rng, size=size)
                sop_uid = uid()
                ds = phantom_dataset(
                    phantom,
                    patient_name=f"Phantom^{region.title()}{k}",
                    patient_id=patient,
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=sop_uid,
                    accession_number=f"A{line:06d}",
                    instance_number=view,
                    photometric="MONOCHROME1" if (k + view) % 2 else "MONOCHROME2",
                    bits_stored=12 if view == 1 else 16,
                    rows=rows,
                    study_datetime=datetime(2024, 2, 1, 9, 0, 0),
                )
                relative = f"{patient}/{study_uid[-8:]}/{view:03d}.dcm"
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(out_dir / relative, enforce_file_format=True)
                by_uid = line % 2 == 0
                region_cell = region if line % 2 == 1 or region == UNSUPPORTED else ""
                lines.append(
                    f"{sop_uid if by_uid else ''},{'' if by_uid else relative},"
                    f"{region_cell},{int(fracture)}"
                )
                line += 1
    labels = out_dir / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels
