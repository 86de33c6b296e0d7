"""Study-level operating points: the ``suspected`` and ``likely`` thresholds of each region.

:func:`models.training.train.train` picks them on the calibrated validation study
probabilities (:func:`region_operating_points`); the node compares a study's probability
with its region's pair.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from config.domain.decision import aggregate_study
from models.runtime.bundle import OperatingPoints
from models.training.datasets import ImageRecord
from models.training.metrics import auroc

logger = logging.getLogger(__name__)


def pick_operating_points(
    labels: np.ndarray, scores: np.ndarray, sensitivity: float = 0.95, specificity: float = 0.95
) -> tuple[float, float]:
    """``(suspected, likely)`` thresholds on held-out scores.

    ``suspected`` reaches sensitivity >= ``sensitivity`` with the fewest positives
    flagged beyond it; ``likely`` reaches specificity >= ``specificity`` with the fewest
    negatives left below it; ``likely`` is raised to ``suspected`` if below it. Each sits
    in the middle of the gap between the scores on either side of it, not on a score:
    the same decisions on these samples, but a margin for the next ones. (A confident
    model puts many positives at exactly 1.0; a threshold on that score would flag only
    a saturated output and miss a fracture at 0.99.)
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("operating points need both positive and negative samples")
    ordered = np.sort(scores)
    need_pos = int(np.ceil(sensitivity * pos.size - 1e-9))
    if need_pos > 0:
        lowest_flagged = pos[pos.size - need_pos]
        below = ordered[ordered < lowest_flagged]
        suspected = (lowest_flagged + below[-1]) / 2 if below.size else float(lowest_flagged)
    else:
        suspected = 1.0
    need_neg = int(np.ceil(specificity * neg.size - 1e-9))
    if need_neg > 0:
        highest_passed = neg[need_neg - 1]
        above = ordered[ordered > highest_passed]
        likely = (
            (highest_passed + above[0]) / 2 if above.size else np.nextafter(highest_passed, np.inf)
        )
    else:
        likely = 0.0
    suspected = float(np.clip(suspected, 0.0, 1.0))
    likely = float(np.clip(max(likely, suspected), 0.0, 1.0))
    return suspected, likely


def study_scores(
    records: Sequence[ImageRecord], probabilities: np.ndarray, aggregation: str = "mean"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Study ids, study probabilities (aggregated views) and study labels.

    A study is positive when any of its views is (not whichever view came last).
    """
    by_study: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for record, probability in zip(records, probabilities, strict=True):
        by_study.setdefault(record.study_id, []).append(float(probability))
        labels[record.study_id] = max(labels.get(record.study_id, 0), int(record.label))
    studies = sorted(by_study)
    scores = np.asarray([aggregate_study(by_study[s], aggregation) for s in studies])
    return studies, scores, np.asarray([labels[s] for s in studies])


@dataclass(frozen=True)
class RegionOperatingPoints:
    """What :func:`region_operating_points` picked.

    Attributes
    ----------
    thresholds
        Operating points per region of the bundle.
    validation_auroc
        Study-level AUROC per region on the validation split (None without both classes).
    pooled_for
        Regions whose validation split lacks a class: their thresholds are the pooled ones.
    """

    thresholds: dict[str, OperatingPoints]
    validation_auroc: dict[str, float | None]
    pooled_for: list[str]


def region_operating_points(
    calibrated: Mapping[str, tuple[Sequence[ImageRecord], np.ndarray]],
    aggregation: str,
    sensitivity: float,
    specificity: float,
) -> RegionOperatingPoints:
    """Operating points per region on calibrated validation probabilities.

    Parameters
    ----------
    calibrated
        Per region of the bundle: its validation records and their calibrated
        image probabilities (from that region's network).
    aggregation
        How a study's views are combined (the bundle's ``study_aggregation``).
    sensitivity, specificity
        Targets of the ``suspected`` and ``likely`` points.

    Returns
    -------
    RegionOperatingPoints
        A region whose validation studies are all of one class gets the points picked on
        all regions' studies pooled, or (0.5, 0.5) when even those lack a class.
    """
    pooled_records = [r for records, _ in calibrated.values() for r in records]
    pooled_probabilities = np.concatenate([p for _, p in calibrated.values()])
    _, pooled_scores, pooled_labels = study_scores(
        pooled_records, pooled_probabilities, aggregation
    )
    thresholds: dict[str, OperatingPoints] = {}
    validation_auroc: dict[str, float | None] = {}
    pooled_for: list[str] = []
    for region, (records, probabilities) in calibrated.items():
        _, scores, labels = study_scores(records, probabilities, aggregation)
        if 0 < labels.sum() < len(labels):
            validation_auroc[region] = round(auroc(labels, scores), 4)
            points = pick_operating_points(labels, scores, sensitivity, specificity)
        else:
            validation_auroc[region] = None
            pooled_for.append(region)
            if 0 < pooled_labels.sum() < len(pooled_labels):
                points = pick_operating_points(
                    pooled_labels, pooled_scores, sensitivity, specificity
                )
            else:
                points = (0.5, 0.5)
            logger.warning("region %s: validation lacks a class; pooled thresholds used", region)
        thresholds[region] = OperatingPoints(suspected=points[0], likely=points[1])
    return RegionOperatingPoints(thresholds, validation_auroc, pooled_for)
