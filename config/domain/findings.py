"""Plain triage result objects: what the flows hand to the SR and SC builders.

They hold numbers and UIDs only, no tensors, so ``dicom_node`` builds DICOM
without importing the models (or torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config import REGIONS, FractureLevel


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The model that produced a result (DICOM TID 4019 Algorithm Identification)."""

    name: str
    version: str
    manufacturer: str = "fracture-triage project"
    trained_on_synthetic_data: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(f"algorithm name and version are required, got {self!r}")


@dataclass(frozen=True)
class BoundingBox:
    """An axis-aligned box in a source image's pixel coordinates (0-based, inclusive)."""

    row_min: float
    col_min: float
    row_max: float
    col_max: float

    def __post_init__(self) -> None:
        if not (0 <= self.row_min <= self.row_max and 0 <= self.col_min <= self.col_max):
            raise ValueError(f"invalid bounding box {self!r}")


@dataclass(frozen=True)
class Thresholds:
    """The two operating points a level was decided with."""

    suspected: float
    likely: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.suspected <= self.likely <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= suspected <= likely <= 1: {self!r}")

    def level(self, probability: float) -> FractureLevel:
        return FractureLevel.from_probability(probability, self.suspected, self.likely)


@dataclass(frozen=True)
class ImageFinding:
    """Stage 1 and stage 2 outcome for one source image."""

    sop_instance_uid: str
    region: str | None  # None: stage 1 found no supported region
    region_probability: float
    fracture_probability: float | None = None  # None when the region is unsupported
    level: FractureLevel | None = None
    box: BoundingBox | None = None  # hottest Grad-CAM region, source pixel coordinates

    def __post_init__(self) -> None:
        if self.region is not None and self.region not in REGIONS:
            raise ValueError(f"unknown region {self.region!r}; expected one of {REGIONS}")
        if (self.region is None) != (self.fracture_probability is None):
            raise ValueError(
                f"image {self.sop_instance_uid}: a fracture probability needs a supported region"
            )
        if self.fracture_probability is not None and not 0 <= self.fracture_probability <= 1:
            raise ValueError(f"fracture probability {self.fracture_probability} not in [0, 1]")


@dataclass(frozen=True)
class StudyFinding:
    """The study-level triage result and the per-image findings behind it."""

    study_instance_uid: str
    region: str | None
    fracture_probability: float | None
    level: FractureLevel | None
    thresholds: Thresholds
    images: tuple[ImageFinding, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError(f"study {self.study_instance_uid}: a finding needs at least one image")
        if (self.region is None) != (self.fracture_probability is None):
            raise ValueError(
                f"study {self.study_instance_uid}: a fracture probability needs a supported region"
            )
