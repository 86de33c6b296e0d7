"""Triage results as plain values: what the flows decide and the output builders write.

They hold numbers, names and UIDs only (no tensors, no datasets), so the DICOM
node builds its objects without importing the models, and every invariant of a
result (a level needs a probability, a probability needs a region, an image is
either assessed or says why not) is checked once, here, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.domain.vocabulary import BoxSource, FractureLevel, is_positive


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

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.row_min, self.col_min, self.row_max, self.col_max)


class OperatingPoints(BaseModel):
    """A region's two thresholds on the fracture probability, and the level they give.

    The one definition: bundles store them, sites override them, results carry them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suspected: float = Field(ge=0.0, le=1.0, description="High-sensitivity operating point.")
    likely: float = Field(ge=0.0, le=1.0, description="High-specificity operating point.")

    @model_validator(mode="after")
    def _ordered(self) -> OperatingPoints:
        if self.likely < self.suspected:
            raise ValueError(f"likely ({self.likely}) is below suspected ({self.suspected})")
        return self

    def level(self, probability: float) -> FractureLevel:
        """Classify a fracture probability against the two points."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fracture probability {probability} is not in [0, 1]")
        if probability >= self.likely:
            return FractureLevel.LIKELY
        if probability >= self.suspected:
            return FractureLevel.SUSPECTED
        return FractureLevel.NOT_SUSPECTED

    def overridden(self, suspected: float | None, likely: float | None) -> OperatingPoints:
        """These points with a site's overrides (None keeps the bundle's value).

        A site that raises only ``suspected`` above the bundle's ``likely`` gets both at
        its value, so the order always holds.
        """
        low = self.suspected if suspected is None else suspected
        high = self.likely if likely is None else likely
        return OperatingPoints(suspected=low, likely=max(high, low))

    @property
    def distinct(self) -> bool:
        """Whether "suspected" can occur at all (it cannot when both points are equal)."""
        return self.suspected < self.likely


@dataclass(frozen=True)
class FractureType:
    """The most probable fracture type of a positive view, from a bundle's type head."""

    name: str  # one of the bundle's fracture_types
    probability: float  # calibrated probability of that type, given a fracture

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a fracture type needs a name")
        _check_probability(self.probability, f"fracture type {self.name!r}: probability")


class Gate(StrEnum):
    """What stopped an image or study from being assessed."""

    HEADER = "header"  # the DICOM header says it is outside the intended use
    PIXELS = "pixels"  # stage 1 / the out-of-distribution score: not an image we assess
    CONFLICT = "conflict"  # the header and the pixels name different regions
    UNREADABLE = "unreadable"  # the pixel data could not be decoded


@dataclass(frozen=True)
class NotAssessed:
    """Why an image or a study was not assessed; the reason never holds patient data."""

    gate: Gate
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.gate, Gate):
            raise TypeError(f"gate must be a Gate, got {self.gate!r}")
        if not self.reason.strip():
            raise ValueError("a not-assessed result needs a reason")


class _Outcome:
    """What an image's and a study's finding share: assessed or not, positive or not."""

    not_assessed: NotAssessed | None
    level: FractureLevel | None

    @property
    def assessed(self) -> bool:
        return self.not_assessed is None

    @property
    def is_positive(self) -> bool:
        return is_positive(self.level)


@dataclass(frozen=True)
class ImageFinding(_Outcome):
    """The outcome for one source image: assessed (region, probability, level), or not.

    ``region_probability`` is stage 1's confidence where stage 1 ran (also for an
    image it found outside the bundle's regions).
    """

    sop_instance_uid: str
    region: str | None = None
    region_probability: float | None = None
    fracture_probability: float | None = None
    level: FractureLevel | None = None
    box: BoundingBox | None = None  # source pixel coordinates, drawn by box_source
    operating_points: OperatingPoints | None = None  # what the level was decided with
    not_assessed: NotAssessed | None = None
    fracture_type: FractureType | None = None  # positive views of a bundle with a type head
    box_source: BoxSource = BoxSource.GRAD_CAM  # what drew the box (detector or Grad-CAM)

    def __post_init__(self) -> None:
        where = f"image {self.sop_instance_uid}"
        if self.fracture_type is not None and not self.is_positive:
            raise ValueError(f"{where}: only a positive view has a fracture type")
        _check_probability(self.region_probability, f"{where}: region probability")
        _check_probability(self.fracture_probability, f"{where}: fracture probability")
        if self.not_assessed is not None:
            decided = (self.fracture_probability, self.level, self.box, self.operating_points)
            if any(value is not None for value in decided):
                raise ValueError(f"{where} was not assessed: it has no probability, level or box")
            return
        if (
            not self.region
            or self.fracture_probability is None
            or self.level is None
            or self.operating_points is None
        ):
            raise ValueError(
                f"{where}: an assessed image needs a region, probability, level, points"
            )


@dataclass(frozen=True)
class StudyFinding(_Outcome):
    """The study-level triage result and the per-image findings behind it.

    Assessed: the study's region, its probability (aggregated over that region's
    views), the level and the operating points it was decided with. Not assessed:
    none of those, and ``not_assessed`` says why.
    """

    study_instance_uid: str
    images: tuple[ImageFinding, ...] = field(default_factory=tuple)
    region: str | None = None
    fracture_probability: float | None = None
    level: FractureLevel | None = None
    operating_points: OperatingPoints | None = None
    not_assessed: NotAssessed | None = None

    def __post_init__(self) -> None:
        where = f"study {self.study_instance_uid}"
        if not self.images:
            raise ValueError(f"{where}: a finding needs at least one image")
        _check_probability(self.fracture_probability, f"{where}: fracture probability")
        decided = (self.region, self.fracture_probability, self.level, self.operating_points)
        if self.not_assessed is not None:
            if any(value is not None for value in decided):
                raise ValueError(f"{where} was not assessed: it has no region or result")
            return
        if any(value is None for value in decided):
            raise ValueError(f"{where}: an assessed study needs region, probability, level, points")
        if not any(image.assessed for image in self.images):
            raise ValueError(f"{where} is assessed but none of its images is")


def _check_probability(value: float | None, what: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} {value} is not in [0, 1]")
