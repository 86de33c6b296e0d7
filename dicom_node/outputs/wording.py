"""The sentences every output says a result with, so the SR, the pictures and the
presentation state word it the same way."""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from config.domain.findings import FractureType, Gate, NotAssessed, OperatingPoints
from config.domain.vocabulary import FractureLevel

__all__ = [
    "GATE_LABELS",
    "finding_sentence",
    "not_assessed_sentence",
    "operating_points_sentence",
    "probability_text",
    "site_text",
]

_SIDES = {"L": "left", "R": "right"}

#: A word or two for each gate, where a table has no room for the reason.
GATE_LABELS: Final = MappingProxyType(
    {
        Gate.HEADER: "header",
        Gate.PIXELS: "image",
        Gate.CONFLICT: "conflict",
        Gate.UNREADABLE: "unreadable",
    }
)


def probability_text(probability: float) -> str:
    """A probability as the outputs print it: two decimals."""
    return f"{probability:.2f}"


def site_text(region: str, side: str | None = None) -> str:
    """``"left wrist"``, or ``"wrist"`` where the side is not known."""
    return f"{_SIDES[side]} {region}" if side in _SIDES else region


def finding_sentence(
    region: str, level: FractureLevel, probability: float, side: str | None = None
) -> str:
    """E.g. ``"Fracture likely in the left wrist (probability 0.83)."``"""
    return (
        f"{level.value.capitalize()} in the {site_text(region, side)} "
        f"(probability {probability_text(probability)})."
    )


def fracture_type_sentence(kind: FractureType) -> str:
    """E.g. ``"Most probable fracture type: 23r-M (probability 0.71, given a fracture)."``"""
    return (
        f"Most probable fracture type: {kind.name} "
        f"(probability {probability_text(kind.probability)}, given a fracture)."
    )


def operating_points_sentence(points: OperatingPoints, region: str | None = None) -> str:
    """The levels' thresholds in one sentence, without a level that cannot occur."""
    where = f" for the {region}" if region else ""
    if not points.distinct:
        return (
            f"Operating point{where}: fracture likely from probability "
            f"{probability_text(points.likely)} (no 'suspected' level: both points are equal)."
        )
    return (
        f"Operating points{where}: fracture suspected from probability "
        f"{probability_text(points.suspected)}, likely from {probability_text(points.likely)}."
    )


def not_assessed_sentence(why: NotAssessed) -> str:
    """E.g. ``"Not assessed for fracture: the image could not be read."``"""
    reason = why.reason.strip().rstrip(".")
    return f"Not assessed for fracture: {reason}."
