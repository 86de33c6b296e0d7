"""The triage decision without a model: operating points, findings, decide()."""

from __future__ import annotations

import pytest

from config.domain.decision import ViewResult, aggregate_study, decide, study_region
from config.domain.findings import (
    BoundingBox,
    Gate,
    ImageFinding,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from config.domain.vocabulary import FractureLevel, OutputKind, is_positive

POINTS = OperatingPoints(suspected=0.3, likely=0.7)
OUTSIDE = NotAssessed(Gate.PIXELS, "stage 1 recognises none of the regions this model assesses")


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


def test_levels_from_operating_points() -> None:
    assert POINTS.level(0.1) is FractureLevel.NOT_SUSPECTED
    assert POINTS.level(0.3) is FractureLevel.SUSPECTED
    assert POINTS.level(0.9) is FractureLevel.LIKELY
    with pytest.raises(ValueError, match="below suspected"):
        OperatingPoints(suspected=0.8, likely=0.2)
    with pytest.raises(ValueError, match=r"1\.5"):
        POINTS.level(1.5)


def test_site_overrides_keep_the_order() -> None:
    assert POINTS.overridden(None, None) == POINTS
    assert POINTS.overridden(0.5, None) == OperatingPoints(suspected=0.5, likely=0.7)
    assert POINTS.overridden(0.9, None) == OperatingPoints(suspected=0.9, likely=0.9)
    assert not OperatingPoints(suspected=0.5, likely=0.5).distinct


def test_positive_is_defined_once() -> None:
    assert [is_positive(level) for level in FractureLevel] == [False, True, True]
    assert not is_positive(None)


def test_output_kinds() -> None:
    assert not OutputKind.WORKLIST_FLAG.is_dicom
    assert OutputKind.SR.is_withdrawable and not OutputKind.REJECTION_NOTE.is_withdrawable


def test_decide_a_positive_study() -> None:
    box = BoundingBox(1, 2, 30, 40)
    finding = decide(
        "1.2.3",
        [
            ViewResult("1.1", "wrist", 0.95, 0.9, box),
            ViewResult("1.2", "wrist", 0.9, 0.5),
            ViewResult("1.3", region_probability=0.8, not_assessed=OUTSIDE),
        ],
        {"wrist": POINTS},
    )
    assert finding.assessed and finding.region == "wrist"
    assert finding.fracture_probability == pytest.approx(0.7)  # mean of the wrist views
    assert finding.level is FractureLevel.LIKELY and finding.is_positive
    assert finding.operating_points == POINTS
    first, second, third = finding.images
    assert (first.level, first.box) == (FractureLevel.LIKELY, box)
    assert second.level is FractureLevel.SUSPECTED
    assert not third.assessed and third.not_assessed == OUTSIDE and third.level is None


def test_a_study_of_views_in_another_region_uses_its_own_points() -> None:
    finding = decide(
        "1.2.3",
        [ViewResult("1.1", "hand", 0.9, 0.2), ViewResult("1.2", "wrist", 0.9, 0.6)],
        {"hand": OperatingPoints(suspected=0.1, likely=0.15), "wrist": POINTS},
    )
    assert finding.region == "hand"  # tie: the first view's region
    assert [image.level for image in finding.images] == [
        FractureLevel.LIKELY,
        FractureLevel.SUSPECTED,
    ]


def test_a_study_no_view_of_which_is_assessed_is_not_assessed() -> None:
    header = NotAssessed(Gate.HEADER, "Body Part Examined says chest")
    finding = decide(
        "1.2.3",
        [
            ViewResult("1.1", not_assessed=header),
            ViewResult("1.2", region_probability=0.9, not_assessed=OUTSIDE),
        ],
        {"wrist": POINTS},
    )
    assert not finding.assessed and not finding.is_positive
    assert finding.not_assessed is not None and finding.not_assessed.gate is Gate.HEADER
    assert "chest" in finding.not_assessed.reason and "stage 1" in finding.not_assessed.reason
    assert finding.region is finding.level is finding.operating_points is None


def test_findings_refuse_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="not assessed"):
        ImageFinding("1.1", fracture_probability=0.4, not_assessed=OUTSIDE)
    with pytest.raises(ValueError, match="an assessed image needs"):
        ImageFinding("1.1", region="wrist", fracture_probability=0.4)
    with pytest.raises(ValueError, match="no region or result"):
        StudyFinding("1.2", (ImageFinding("1.1", not_assessed=OUTSIDE),), region="wrist",
                     not_assessed=OUTSIDE)  # fmt: skip
    with pytest.raises(ValueError, match="at least one image"):
        StudyFinding("1.2", (), not_assessed=OUTSIDE)
    with pytest.raises(ValueError, match="needs a reason"):
        NotAssessed(Gate.PIXELS, " ")
    with pytest.raises(ValueError, match="no operating points for region 'knee'"):
        decide("1.2", [ViewResult("1.1", "knee", 0.9, 0.5)], {"wrist": POINTS})
