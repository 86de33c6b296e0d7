"""Study aggregation and study region."""

from __future__ import annotations

import pytest

from config.domain.decision import aggregate_study, study_region


def test_aggregation() -> None:
    assert aggregate_study([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert aggregate_study([0.2, 0.4, 0.9], "max") == pytest.approx(0.9)
    assert aggregate_study([0.3]) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("values", "method", "match"),
    [([], "mean", "empty"), ([0.5], "median", "median"), ([1.5], "mean", "1.5")],
)
def test_aggregation_rejects_bad_input(values: list[float], method: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        aggregate_study(values, method)


def test_study_region() -> None:
    assert study_region(["wrist", None, "hand", "wrist"]) == "wrist"
    assert study_region(["hand", "wrist"]) == "hand"  # tie: first seen
    assert study_region([None, None]) is None
    assert study_region([]) is None
    with pytest.raises(ValueError, match="knee"):
        study_region(["knee"])
