"""Binary classification metrics of the evaluation, on MONAI's metrics where it has them.

MONAI (``monai.metrics``) computes the AUROC (:func:`monai.metrics.compute_roc_auc`), the
confusion counts (:func:`monai.metrics.get_confusion_matrix`), the expected calibration
error (:class:`monai.metrics.CalibrationErrorMetric`) and the reliability bins
(:func:`monai.metrics.calibration_binning`). It has no bootstrap confidence interval,
Cohen's kappa or ROC curve points, so those are here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import (
    CalibrationErrorMetric,
    calibration_binning,
    compute_roc_auc,
    get_confusion_matrix,
)

#: Bins of the expected calibration error and the reliability diagram.
ECE_BINS = 10


def _one_channel(values: np.ndarray) -> torch.Tensor:
    """A vector as MONAI's (batch 1, channel 1, N) layout, float32 as its metrics compute."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(1, 1, -1)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (:func:`monai.metrics.compute_roc_auc`; ties count one half).

    Raises
    ------
    ValueError
        If ``labels`` holds only one class (naming the counts).
    """
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"AUROC needs both classes; got {positives} positives, {negatives} negatives"
        )
    area = compute_roc_auc(
        torch.as_tensor(np.asarray(scores, dtype=np.float64)),
        torch.as_tensor(labels.astype(np.int64)),
    )
    return float(area)  # type: ignore[arg-type]


def bootstrap_auroc_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC (resamples with one class skipped).

    ``groups`` (the patient of each study): whole groups are resampled, each with all its
    studies, because one patient's studies are not independent of each other. Without
    it every study is a group of its own. Returns ``(nan, nan)`` when fewer than 10
    resamples have both classes.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    members = None  # no groups: each study is its own, drawn directly
    if groups is not None:
        _, group_of = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(group_of == g) for g in range(int(group_of.max()) + 1)]
    draws = len(labels) if members is None else len(members)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picks = rng.integers(0, draws, draws)
        index = picks if members is None else np.concatenate([members[p] for p in picks])
        sample = labels[index]
        if sample.all() or not sample.any():
            continue
        values.append(auroc(sample, scores[index]))
    if len(values) < 10:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Binary confusion counts ``{"tp", "fp", "tn", "fn"}`` (:func:`get_confusion_matrix`)."""
    truth = _one_channel(np.asarray(labels).astype(bool))
    flagged = _one_channel(np.asarray(predicted).astype(bool))
    tp, fp, tn, fn = (int(count) for count in get_confusion_matrix(flagged, truth)[0, 0])
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def cohen_kappa(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa between two label vectors (any number of classes); 1.0 if both constant."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if labels.shape != predicted.shape or labels.size == 0:
        raise ValueError(
            f"kappa needs two equal, non-empty shapes; got {labels.shape}, {predicted.shape}"
        )
    observed = float((labels == predicted).mean())
    classes = np.union1d(labels, predicted)
    expected = float(sum((labels == c).mean() * (predicted == c).mean() for c in classes))
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of binary probabilities: bin-size-weighted mean |accuracy - confidence| per bin.

    Equal-width bins over [0, 1] on the positive-class probability (reliability diagram),
    by :class:`monai.metrics.CalibrationErrorMetric`.
    """
    if np.asarray(labels).size == 0:
        raise ValueError("ECE of an empty set")
    # right=True: torch.bucketize puts a value on an inner bin edge into the upper bin.
    metric = CalibrationErrorMetric(num_bins=bins, calibration_reduction="expected", right=True)
    metric(y_pred=_one_channel(probabilities), y=_one_channel(labels))
    return float(metric.aggregate())  # type: ignore[arg-type]


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """``(mean probability, observed frequency, count)`` per non-empty equal-width bin."""
    mean_p, observed, counts = calibration_binning(
        _one_channel(probabilities), _one_channel(labels), num_bins=bins, right=True
    )
    return [
        (float(p), float(o), int(n))
        for p, o, n in zip(mean_p[0, 0], observed[0, 0], counts[0, 0], strict=True)
        if n > 0
    ]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false positive rate, true positive rate)`` at every distinct threshold, from (0, 0)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    tpr = [0.0] + [float((scores[labels] >= t).mean()) for t in thresholds]
    fpr = [0.0] + [float((scores[~labels] >= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def operating_point_metrics(
    labels: np.ndarray, scores: np.ndarray, name: str, thresholds: float | np.ndarray
) -> dict[str, Any]:
    """Threshold, sensitivity, specificity, kappa and confusion counts at one operating point.

    ``thresholds`` is one value, or one per study (each study against its own region's
    point, as the node decides); the latter is reported as ``"per region"``.
    """
    predicted = (np.asarray(scores, dtype=np.float64) >= thresholds).astype(int)
    single = np.ndim(thresholds) == 0
    threshold = round(float(thresholds), 4) if single else "per region"
    return {f"threshold_{name}": threshold} | decision_metrics(labels, predicted, name)


def decision_metrics(labels: np.ndarray, predicted: np.ndarray, name: str) -> dict[str, Any]:
    """Sensitivity, specificity, kappa and confusion counts of yes/no decisions."""
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(predicted).astype(int)
    matrix = confusion(labels, predicted)
    positives, negatives = matrix["tp"] + matrix["fn"], matrix["tn"] + matrix["fp"]
    return {
        f"sensitivity_{name}": round(matrix["tp"] / positives, 4) if positives else None,
        f"specificity_{name}": round(matrix["tn"] / negatives, 4) if negatives else None,
        f"kappa_{name}": round(cohen_kappa(labels, predicted), 4),
        f"confusion_{name}": matrix,
    }


def binary_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    suspected: float | np.ndarray,
    likely: float | np.ndarray,
    seed: int = 0,
    patients: np.ndarray | None = None,
) -> dict[str, Any]:
    """AUROC (+CI, resampling ``patients`` when given), sensitivity/specificity/kappa/confusion
    at both points, ECE, counts."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    result: dict[str, Any] = {
        "studies": int(labels.size),
        "positives": int(labels.sum()),
        "ece": round(expected_calibration_error(labels, scores), 4),
    }
    if 0 < labels.sum() < labels.size:
        low, high = bootstrap_auroc_ci(labels, scores, seed=seed, groups=patients)
        result["auroc"] = round(auroc(labels, scores), 4)
        result["auroc_ci"] = [round(low, 4), round(high, 4)]
    else:
        result["auroc"], result["auroc_ci"] = None, None
    # At 0.5, comparable with published figures (MURA's radiologists: 0.705 to 0.778).
    result["kappa_at_0_5"] = round(cohen_kappa(labels, (scores >= 0.5).astype(int)), 4)
    result |= operating_point_metrics(labels, scores, "suspected", suspected)
    return result | operating_point_metrics(labels, scores, "likely", likely)
