"""Every data layout ``train`` and ``evaluate`` read, by name, and a phantom copy of each.

``mura``, ``csv`` and ``dicom`` are described in :mod:`models.training.datasets`;
``fracatlas`` and ``grazpedwri`` (public fracture sets in their authors' own files) in
:mod:`models.training.public_sets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from config.domain.vocabulary import LabelMeaning
from models.training.datasets import (
    DatasetError,
    ImageRecord,
    load_csv,
    load_dicom_folder,
    load_mura,
    write_phantom_csv,
    write_phantom_dicom_folder,
    write_phantom_mura,
)
from models.training.public_sets import (
    load_fracatlas,
    load_fracture_types,
    load_grazpedwri,
    write_phantom_fracatlas,
    write_phantom_fracture_types,
    write_phantom_grazpedwri,
)

Layout = Literal["mura", "csv", "dicom", "fracatlas", "grazpedwri", "fracture-types"]

#: Names of the data layouts :func:`load_records` understands.
LAYOUTS: tuple[str, ...] = get_args(Layout)


@dataclass(frozen=True)
class LayoutDefaults:
    """What a layout's labels mean and whom its images show: a bundle trained on it
    says so unless told otherwise (``train`` options)."""

    label_meaning: LabelMeaning = LabelMeaning.FRACTURE
    min_age_years: float | None = 18.0  # adults unless the data set is paediatric
    max_age_years: float | None = None

    def training_options(self) -> dict[str, Any]:
        """The :class:`~models.training.config.TrainConfig` fields they set."""
        return {
            "label_meaning": self.label_meaning,
            "min_age_years": self.min_age_years,
            "max_age_years": self.max_age_years,
        }


#: Per layout; the others get :class:`LayoutDefaults`' defaults.
LAYOUT_DEFAULTS: dict[str, LayoutDefaults] = {
    # MURA's labels mark any abnormality (fractures, hardware, arthritis, lesions).
    "mura": LayoutDefaults(label_meaning=LabelMeaning.ABNORMALITY),
    # GRAZPEDWRI-DX: children and adolescents, 0.2 to 19 years.
    "grazpedwri": LayoutDefaults(min_age_years=None, max_age_years=19.0),
}


def load_records(
    path: str | Path, layout: Layout, labels_csv: str | Path | None = None
) -> list[ImageRecord]:
    """Load a data source of the given layout (one of :data:`LAYOUTS`).

    Parameters
    ----------
    path
        MURA folder, CSV file (or a folder holding ``labels.csv``), DICOM folder,
        FracAtlas folder (or its parent), or GRAZPEDWRI-DX folder (holding ``dataset.csv``).
    layout
        One of :data:`LAYOUTS`.
    labels_csv
        DICOM layout only: the labels CSV (default ``<path>/labels.csv``).
    """
    path = Path(path)
    if layout == "mura":
        return load_mura(path)
    if layout == "csv":
        return load_csv(path / "labels.csv" if path.is_dir() else path)
    if layout == "dicom":
        return load_dicom_folder(path, labels_csv)
    if layout == "fracatlas":
        return load_fracatlas(path)
    if layout == "grazpedwri":
        return load_grazpedwri(path)
    if layout == "fracture-types":
        return load_fracture_types(path)
    raise DatasetError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def write_phantom_dataset(
    out_dir: str | Path,
    layout: Layout,
    size: int = 96,
    seed: int = 0,
    patients: int | None = None,
) -> Path:
    """Write a phantom data set in ``layout``; returns the path to pass to the loader.

    ``patients`` per class (default: each writer's small default): images per class in
    the CSV layout, train patients per region in the MURA layout (a third as many, at
    least one, in ``valid``), two-view studies per class in the DICOM layout, images per
    region in the FracAtlas layout, two-view patients in the GRAZPEDWRI-DX layout,
    training images per class in the fracture-type layout.

    Raises
    ------
    DatasetError
        If ``layout`` is unknown or ``patients`` is below 1.
    """
    if patients is not None and patients < 1:
        raise DatasetError(f"patients {patients} is below 1")
    out_dir = Path(out_dir)
    if layout == "mura":
        counts = (patients, max(1, patients // 3)) if patients else (8, 3)
        return write_phantom_mura(out_dir, counts, size=size, seed=seed).parent
    if layout == "csv":
        return write_phantom_csv(out_dir, patients or 20, size=size, seed=seed)
    if layout == "dicom":
        write_phantom_dicom_folder(out_dir, patients or 2, size=size, seed=seed)
        return out_dir
    if layout == "fracatlas":
        return write_phantom_fracatlas(out_dir, patients or 6, size=size, seed=seed)
    if layout == "grazpedwri":
        return write_phantom_grazpedwri(out_dir, patients or 8, size=size, seed=seed)
    if layout == "fracture-types":
        return write_phantom_fracture_types(out_dir, patients or 4, size=size, seed=seed)
    raise DatasetError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
