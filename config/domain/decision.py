"""The triage decision: per-view model results and the operating points make the study finding.

Pure logic: no model, no file, no database. The flows hand in what the models said
about each view (in source-image coordinates) and the bundle's operating points
(with the site's overrides applied); :func:`decide` returns the
:class:`~config.domain.findings.StudyFinding` the outputs are built from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from config.domain.findings import (
    BoundingBox,
    FractureType,
    Gate,
    ImageFinding,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from config.domain.vocabulary import BoxSource

#: Study aggregation methods a bundle may name.
Aggregation = Literal["mean", "max"]
AGGREGATIONS: tuple[str, ...] = ("mean", "max")


@dataclass(frozen=True)
class ViewResult:
    """What the models (or a gate before them) said about one view.

    Either ``not_assessed`` is set (a gate stopped the view), or stage 1 named one of
    the bundle's regions and stage 2 gave its fracture probability and, where it was
    explained, the hottest box in source pixels.
    """

    sop_instance_uid: str
    region: str | None = None
    region_probability: float | None = None
    fracture_probability: float | None = None
    box: BoundingBox | None = None
    not_assessed: NotAssessed | None = None
    fracture_type: FractureType | None = None  # the type head's call, kept where positive
    box_source: BoxSource = BoxSource.GRAD_CAM

    @classmethod
    def no_region(
        cls, sop_instance_uid: str, region_probability: float | None, reason: str
    ) -> ViewResult:
        """Stage 1 named none of the bundle's regions (out of distribution, unsupported,
        unsure): the view is not assessed by its pixels. The node and the evaluation both
        say it this way, so the figures describe what the node does."""
        return cls(
            sop_instance_uid,
            region_probability=region_probability,
            not_assessed=NotAssessed(Gate.PIXELS, reason),
        )


def aggregate_study(probabilities: Sequence[float], method: str = "mean") -> float:
    """Combine the fracture probabilities of a study's views into one.

    ``"mean"`` is MURA's study-level rule, ``"max"`` the most suspicious view.

    Raises
    ------
    ValueError
        If ``probabilities`` is empty, holds a value outside [0, 1] or NaN, or the method
        is unknown.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; expected one of {AGGREGATIONS}")
    values = np.asarray(list(probabilities), dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot aggregate an empty list of probabilities")
    bad = values[~((values >= 0.0) & (values <= 1.0))]
    if bad.size:
        raise ValueError(f"probability {bad[0]} is not in [0, 1]")
    return float(values.mean() if method == "mean" else values.max())


def study_region(regions: Sequence[str | None]) -> str | None:
    """The study's region: the majority of the views' regions, None if no view has one.

    Ties go to the region seen first, so the result does not depend on set ordering.
    """
    named = [region for region in regions if region is not None]
    if not named:
        return None
    counts = Counter(named)
    best = max(counts.values())
    return next(region for region in named if counts[region] == best)


def image_finding(view: ViewResult, points: Mapping[str, OperatingPoints]) -> ImageFinding:
    """One view's finding: its level from its region's operating points, or not assessed."""
    if view.not_assessed is not None:
        return ImageFinding(
            view.sop_instance_uid,
            region_probability=view.region_probability,
            not_assessed=view.not_assessed,
        )
    if view.region is None or view.fracture_probability is None:
        raise ValueError(f"view {view.sop_instance_uid} has no region result and no gate")
    if view.region not in points:
        raise ValueError(f"no operating points for region {view.region!r}; have {sorted(points)}")
    level = points[view.region].level(view.fracture_probability)
    return ImageFinding(
        view.sop_instance_uid,
        region=view.region,
        region_probability=view.region_probability,
        fracture_probability=view.fracture_probability,
        level=level,
        box=view.box,
        box_source=view.box_source,
        operating_points=points[view.region],
        # A type is a claim about a fracture: said only where the view is flagged.
        fracture_type=view.fracture_type if level.is_positive else None,
    )


def decide(
    study_instance_uid: str,
    views: Sequence[ViewResult],
    points: Mapping[str, OperatingPoints],
    aggregation: str = "mean",
) -> StudyFinding:
    """The study finding from its views' results and each region's operating points.

    The study's region is the majority region of its assessed views; its probability
    aggregates those views'. A study none of whose views was assessed is not assessed
    either, for the reason its views give.
    """
    images = tuple(image_finding(view, points) for view in views)
    region = study_region([image.region for image in images])
    if region is None:
        return StudyFinding(study_instance_uid, images, not_assessed=study_not_assessed(images))
    probability = aggregate_study(
        [i.fracture_probability for i in images if i.region == region and i.assessed],  # type: ignore[misc]
        aggregation,
    )
    return StudyFinding(
        study_instance_uid,
        images,
        region=region,
        fracture_probability=probability,
        level=points[region].level(probability),
        operating_points=points[region],
    )


def study_not_assessed(images: Sequence[ImageFinding]) -> NotAssessed:
    """Why a study none of whose views was assessed is not assessed: its views' reasons."""
    reasons = [image.not_assessed for image in images if image.not_assessed is not None]
    if not reasons:
        raise ValueError("every image was assessed: the study is not 'not assessed'")
    gates = {reason.gate for reason in reasons}
    gate = gates.pop() if len(gates) == 1 else _most_specific(gates | {reasons[0].gate})
    distinct = list(dict.fromkeys(reason.reason for reason in reasons))
    return NotAssessed(gate, "; ".join(distinct))


def _most_specific(gates: set[Gate]) -> Gate:
    # A header that says "outside" is the clearest reason a reader can check.
    for gate in (Gate.HEADER, Gate.CONFLICT, Gate.PIXELS, Gate.UNREADABLE):
        if gate in gates:
            return gate
    raise ValueError(f"no gate among {gates}")  # pragma: no cover - Gate is exhaustive
