"""The pixel gate's out-of-distribution evaluation set, and what the gate does on it.

Everything non-target that the package registries give us, with no download at run time:
the real radiographs of ``pydicom-data`` (a chest CR and a distal-tibia CR from the NEMA
sample set), its other greyscale images (a CT and an MR slice, LUT test patterns), and
synthetic radiographs of body parts the bundle does not assess (knee, spine, pelvis,
foot; :data:`models.training.phantoms.OTHER_BODY_PARTS`, never trained on). Each image is
preprocessed as the node preprocesses a DICOM view, with its header ignored, so the
figures are the pixel gate's alone (the header gate would stop most of the DICOM ones).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread

from models.runtime.inference import HierarchicalModel, RegionCall, StageOneRejection
from models.runtime.preprocessing import display_image_from_dataset, preprocess
from models.training.phantoms import OTHER_BODY_PARTS, render_other_body_part

__all__ = [
    "PYDICOM_DATA_IMAGES",
    "OodImage",
    "gate_figures",
    "out_of_distribution_figures",
    "out_of_distribution_set",
    "pixel_gate_calls",
]

#: pydicom-data files in the set: (file, what it is, its group in the figures).
PYDICOM_DATA_IMAGES: tuple[tuple[str, str, str], ...] = (
    ("RG1_UNCR.dcm", "chest CR (NEMA sample)", "real radiographs"),
    ("RG3_UNCR.dcm", "distal tibia CR (NEMA sample)", "real radiographs"),
    ("CT_small.dcm", "CT slice", "other greyscale images"),
    ("MR_small.dcm", "MR slice", "other greyscale images"),
    ("mlut_18.dcm", "modality LUT test pattern", "other greyscale images"),
    ("vlut_04.dcm", "VOI LUT test pattern", "other greyscale images"),
    ("image_dfl.dcm", "deflated test image", "other greyscale images"),
)


@dataclass(frozen=True)
class OodImage:
    """One image outside the intended use: what it is, its group, its display pixels."""

    source: str
    group: str
    display: np.ndarray


def _pydicom_data_images() -> list[OodImage]:
    from pydicom.data import get_testdata_file

    images = []
    for name, what, group in PYDICOM_DATA_IMAGES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom-data warns that it cannot download extras
            path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"pydicom-data file {name} is not installed")
        with warnings.catch_warnings():
            # The LUT test patterns make pydicom warn about their float LUT output.
            warnings.simplefilter("ignore")
            display = display_image_from_dataset(dcmread(path))
        images.append(OodImage(f"pydicom-data {name}: {what}", group, display))
    return images


def out_of_distribution_set(per_body_part: int = 25, seed: int = 0) -> list[OodImage]:
    """The real pydicom-data images and ``per_body_part`` synthetic ones of each kind."""
    rng = np.random.default_rng(seed)
    group = "synthetic other body parts"
    synthetic = [
        OodImage(f"synthetic {kind}", group, render_other_body_part(kind, rng))
        for kind in OTHER_BODY_PARTS
        for _ in range(per_body_part)
    ]
    return _pydicom_data_images() + synthetic


def pixel_gate_calls(model: HierarchicalModel, displays: Iterable[np.ndarray]) -> list[RegionCall]:
    """Stage 1 and the pixel gate on display images, preprocessed as the node does."""
    inputs = [preprocess(display, model.image_size)[0] for display in displays]
    if not inputs:
        return []
    return model.classify_regions(np.stack(inputs))


def gate_figures(calls: Sequence[RegionCall]) -> dict[str, Any]:
    """How many views the pixel gate stopped, in all and by which of its parts."""
    stopped = Counter(call.rejection for call in calls if call.rejection is not None)
    total = len(calls)

    def share(count: int) -> float | None:
        return round(count / total, 4) if total else None

    return {
        "images": total,
        "not_assessed": share(sum(stopped.values())),
        **{f"by_{part.value}": share(stopped[part]) for part in StageOneRejection},
    }


def out_of_distribution_figures(
    model: HierarchicalModel, images: Sequence[OodImage]
) -> dict[str, Any]:
    """The gate's figures per group of the set, and each real image's outcome."""
    calls = pixel_gate_calls(model, (image.display for image in images))
    groups: dict[str, list[RegionCall]] = {}
    for image, call in zip(images, calls, strict=True):
        groups.setdefault(image.group, []).append(call)
    return {
        "groups": {group: gate_figures(members) for group, members in groups.items()},
        "images": {
            image.source: call.rejection.value if call.rejection else f"assessed as {call.region}"
            for image, call in zip(images, calls, strict=True)
            if image.group != "synthetic other body parts"
        },
    }
