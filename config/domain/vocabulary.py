"""Names shared by the models and the DICOM outputs, defined once."""

from __future__ import annotations

from enum import StrEnum

#: Anatomical regions with a fracture model (MURA's seven upper-extremity regions).
REGIONS: tuple[str, ...] = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")

#: Stage-1 outcome for anything that is none of :data:`REGIONS`.
UNSUPPORTED = "unsupported"

#: Stage-1 classes in network output order.
REGION_CLASSES: tuple[str, ...] = (*REGIONS, UNSUPPORTED)


class FractureLevel(StrEnum):
    """Three-level triage result, from the bundle's two operating points."""

    NOT_SUSPECTED = "no fracture suspected"
    SUSPECTED = "fracture suspected"  # at or above the high-sensitivity threshold
    LIKELY = "fracture likely"  # at or above the high-specificity threshold

    @classmethod
    def from_probability(cls, probability: float, suspected: float, likely: float) -> FractureLevel:
        """Classify ``probability`` against the two operating points."""
        if not 0.0 <= suspected <= likely <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= suspected ({suspected}) <= likely ({likely}) <= 1"
            )
        if probability >= likely:
            return cls.LIKELY
        if probability >= suspected:
            return cls.SUSPECTED
        return cls.NOT_SUSPECTED
