"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from config import REGIONS
from models.training.phantoms import phantom_dataset, render_phantom


def machine_description() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def write_report(path: Path | None, **sections: object) -> None:
    """Write a benchmark's JSON report (the machine first, then ``sections``); None: skip."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_description(), **sections}, indent=2))


def write_phantom_study(
    out_dir: Path,
    index: int,
    views: int,
    fractured: bool,
    rng: np.random.Generator,
    name: str = "Bench",
    rows: int = 512,
    *,
    computed_radiography: bool = False,
    series_per_view: bool = False,
    region: str | None = None,
) -> Path:
    """One phantom DX study of ``views`` views (``rows`` square) under ``out_dir/<study UID>/``.

    The region is ``region``, else it follows ``index`` through REGIONS; the first view
    carries the break when ``fractured``. Patient names and IDs are fictional (``name``
    and ``index``).
    ``computed_radiography`` writes CR Image Storage instead of DX (same pixels);
    ``series_per_view`` puts each view in a series of its own, as CR units often do.
    """
    region = region or REGIONS[index % len(REGIONS)]
    study_uid, series_uid = generate_uid(), generate_uid()
    study_dir = out_dir / study_uid
    study_dir.mkdir(parents=True)
    fictional_patient = {
        "patient_name": f"{name}^Patient{index:04d}",
        "patient_id": f"{name.upper()}-{index:04d}",
        "accession_number": f"{name.upper()[:5]}{index:05d}",
    }
    for view in range(1, views + 1):
        if series_per_view:
            series_uid = generate_uid()
        phantom = render_phantom(region, fractured and view == 1, rng, size=256)
        ds = phantom_dataset(
            phantom,
            **fictional_patient,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_instance_uid=generate_uid(),
            instance_number=view,
            rows=rows,
            view_position="PA" if view == 1 else "LL",
        )
        if series_per_view:
            ds.SeriesNumber = view
        if computed_radiography:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
            ds.Modality = "CR"
            del ds.PresentationIntentType  # DX only
        ds.save_as(study_dir / f"{view:03d}.dcm", enforce_file_format=True)
    return study_dir
