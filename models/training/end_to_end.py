"""End-to-end evaluation: what the node would say, with the regions stage 1 predicted.

Stage 2's figures (:mod:`models.training.evaluation`) use the network of each study's
*true* region: they describe the fracture models. The node does not know the true
region: stage 1 routes each view (or the pixel gate stops it) and
:func:`config.domain.decision.decide` makes the study's finding. Here every study is
decided exactly so and scored against its label. A positive study that was not
assessed, or was assessed under another region than its own (misrouted), counts as a
miss at both operating points whatever its probability; a negative study flagged under
any region is a false positive.

Only the views' pixels are used: the header gate needs DICOM headers, which most data
sets (MURA's PNGs, FracAtlas's JPEGs) do not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from config.domain.decision import ViewResult, decide
from config.domain.findings import OperatingPoints, StudyFinding
from config.domain.vocabulary import FractureLevel
from models.training.datasets import ImageRecord
from models.training.metrics import decision_metrics

#: The study levels that count as flagged at each operating point.
FLAGGED_AT = {
    "suspected": (FractureLevel.SUSPECTED, FractureLevel.LIKELY),
    "likely": (FractureLevel.LIKELY,),
}


@dataclass(frozen=True)
class DecidedStudy:
    """One study as the node would have decided it, beside its truth."""

    study_id: str
    label: bool
    region: str  # the study's true region
    finding: StudyFinding

    @property
    def misrouted(self) -> bool:
        """Assessed under another region than the study's own."""
        return self.finding.assessed and self.finding.region != self.region

    def flagged(self, point: str) -> bool:
        """Whether the node's finding counts as a fracture found at ``point``.

        A positive study's flag counts only under its own region: a fracture reported in
        another body part is a miss for the radiologist, not a detection.
        """
        raised = self.finding.level in FLAGGED_AT[point]
        return raised and not (self.label and self.misrouted)


def decide_studies(
    views: Sequence[tuple[ImageRecord, ViewResult]],
    points: Mapping[str, OperatingPoints],
    aggregation: str,
) -> list[DecidedStudy]:
    """Group the views by study and decide each study as the node does."""
    by_study: dict[str, list[tuple[ImageRecord, ViewResult]]] = {}
    for record, view in views:
        by_study.setdefault(record.study_id, []).append((record, view))
    studies = []
    for study_id in sorted(by_study):
        members = by_study[study_id]
        finding = decide(study_id, [view for _, view in members], points, aggregation)
        label = any(record.label for record, _ in members)
        studies.append(DecidedStudy(study_id, label, members[0][0].region, finding))
    return studies


def end_to_end_metrics(studies: Sequence[DecidedStudy]) -> dict[str, Any]:
    """Sensitivity, specificity, kappa and confusion at both points; not assessed, misrouted."""
    labels = np.asarray([study.label for study in studies], dtype=int)
    result: dict[str, Any] = {
        "studies": len(studies),
        "positives": int(labels.sum()),
        "not_assessed": sum(not study.finding.assessed for study in studies),
        "misrouted": sum(study.misrouted for study in studies),
    }
    if not studies:
        return result
    for point in FLAGGED_AT:
        flagged = np.asarray([study.flagged(point) for study in studies], dtype=int)
        result |= decision_metrics(labels, flagged, point)
    return result
