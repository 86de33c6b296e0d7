"""The evaluation's metrics come from MONAI: each agrees with the textbook computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.training.metrics import (
    auroc,
    binary_metrics,
    bootstrap_auroc_ci,
    confusion,
    expected_calibration_error,
    reliability_bins,
)


def _mann_whitney_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    # The rank-sum form: ties share their mean rank, so a tied pair counts one half.
    labels = labels.astype(bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    positives, negatives = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _equal_width_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> tuple[float, list[tuple[float, float, int]]]:
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    table = [
        (float(probabilities[index == b].mean()), float(labels[index == b].mean()), int(n))
        for b in range(bins)
        if (n := int((index == b).sum()))
    ]
    ece = sum(n * abs(observed - mean) for mean, observed, n in table) / labels.size
    return float(ece), table


def test_auroc_agrees_with_the_mann_whitney_statistic() -> None:
    assert auroc(np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])) == (
        pytest.approx(8 / 9)
    )
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    rng = np.random.default_rng(3)
    for _ in range(50):
        labels = rng.integers(0, 2, 40)
        labels[:2] = (0, 1)
        scores = np.round(rng.uniform(size=40), 1)  # many ties
        assert auroc(labels, scores) == pytest.approx(_mann_whitney_auroc(labels, scores))


def test_confusion_counts_agree_with_counting() -> None:
    labels = np.array([1, 1, 0, 1, 0])
    assert confusion(labels, np.array([1, 0, 1, 1, 0])) == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    rng = np.random.default_rng(4)
    truth, flagged = rng.integers(0, 2, 300).astype(bool), rng.integers(0, 2, 300).astype(bool)
    assert confusion(truth, flagged) == {
        "tp": int((truth & flagged).sum()),
        "fp": int((~truth & flagged).sum()),
        "tn": int((~truth & ~flagged).sum()),
        "fn": int((truth & ~flagged).sum()),
    }


def test_calibration_error_and_bins_agree_with_equal_width_bins() -> None:
    rng = np.random.default_rng(5)
    probabilities = rng.uniform(size=500) ** 2
    labels = (rng.uniform(size=500) < probabilities * 0.8).astype(int)
    ece, table = _equal_width_bins(labels, probabilities)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(ece, abs=1e-6)
    ours = reliability_bins(labels, probabilities)
    assert [n for *_, n in ours] == [n for *_, n in table]
    assert np.allclose([b[:2] for b in ours], [b[:2] for b in table], atol=1e-6)
    # Known case: two studies at 0.15 (one positive: off by 0.35), two at 0.85 (both
    # positive: off by 0.15), each bin weighted by its two studies.
    assert expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.15, 0.85] * 2)) == (
        pytest.approx((2 * 0.35 + 2 * 0.15) / 4, abs=1e-6)
    )
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.array([]), np.array([]))


def test_each_study_against_its_own_threshold() -> None:
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.6, 0.3, 0.5, 0.1])
    # Per-study thresholds (each study's region): flags 0.6 (>= 0.5) and 0.3 (>= 0.2) only.
    metrics = binary_metrics(labels, scores, np.array([0.5, 0.2, 0.7, 0.2]), 0.9)
    assert metrics["threshold_suspected"] == "per region" and metrics["threshold_likely"] == 0.9
    assert metrics["confusion_suspected"] == {"tp": 2, "fp": 0, "tn": 2, "fn": 0}
    assert metrics["sensitivity_likely"] == 0.0 and metrics["specificity_likely"] == 1.0


def test_a_study_is_positive_when_any_of_its_views_is() -> None:
    from models.training.datasets import ImageRecord
    from models.training.operating_points import study_scores

    views = [
        ImageRecord(Path(f"{k}.png"), "p1", "s1", "wrist", label)
        for k, label in enumerate((0, 1, 0))  # the positive view is not the last one
    ]
    views.append(ImageRecord(Path("3.png"), "p2", "s2", "wrist", 0))
    studies, scores, labels = study_scores(views, np.array([0.2, 0.9, 0.1, 0.3]))
    assert studies == ["s1", "s2"]
    assert labels.tolist() == [1, 0]
    assert scores[0] == pytest.approx(0.4)


def test_kappa_at_one_half_is_reported_beside_the_operating_points() -> None:
    from models.training.metrics import binary_metrics

    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.6, 0.7, 0.9, 0.4, 0.2])  # at 0.5: one FP, one FN
    row = binary_metrics(labels, scores, 0.3, 0.8)
    assert row["kappa_at_0_5"] == pytest.approx(1 / 3, abs=1e-4)
    assert "kappa_suspected" in row and "kappa_likely" in row


def test_the_bootstrap_resamples_patients_with_all_their_studies() -> None:
    """Two patients, each with three studies of one label: drawing patients whole, every
    usable resample holds both patients' studies in the same proportions, so the AUROC
    does not move; drawing studies one by one, it does."""
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.8, 0.5, 0.3, 0.6])
    patients = np.array(["a", "a", "a", "b", "b", "b"])
    by_patient = bootstrap_auroc_ci(labels, scores, groups=patients)
    assert by_patient[0] == pytest.approx(by_patient[1]) == pytest.approx(auroc(labels, scores))
    by_study = bootstrap_auroc_ci(labels, scores)
    assert by_study[1] - by_study[0] > 0.1
    # Without groups every study is its own patient: the same draws as before.
    assert by_study == bootstrap_auroc_ci(labels, scores, groups=np.arange(6))
    assert binary_metrics(labels, scores, 0.5, 0.7, patients=patients)["auroc_ci"] == [
        round(by_patient[0], 4),
        round(by_patient[1], 4),
    ]
