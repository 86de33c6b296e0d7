"""The study summary Secondary Capture: table content, size, references, dciodvfy validity."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.decision import ViewResult
from config.domain.findings import (
    AlgorithmIdentity,
    Gate,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.summary import (
    SUMMARY_SERIES_DESCRIPTION,
    SUMMARY_WIDTH,
    build_summary_secondary_capture,
    render_summary,
    summary_page,
    summary_rows,
)
from tests.dicom_node.conftest import study_finding

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _build(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity) -> Dataset:
    return build_summary_secondary_capture(
        images, finding, algorithm, NewInstance.new_series(9003), intended_use=INTENDED_USE
    )


INTENDED_USE = "Triage of adult wrist radiographs for fractures."
UNREADABLE = NotAssessed(Gate.UNREADABLE, "the pixel data could not be decoded")


def _texts(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity) -> str:
    page = summary_page(images, finding, algorithm, INTENDED_USE)
    return "\n".join(" | ".join(line.cells) for line in page)


@pytest.mark.parametrize("synthetic", [False, True], ids=["real-data", "synthetic-data"])
def test_summary_is_valid_and_references_every_view(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    synthetic_algorithm: AlgorithmIdentity,
    synthetic: bool,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    model = synthetic_algorithm if synthetic else algorithm
    path = tmp_path / "summary.dcm"
    _build(dx_images, positive_finding, model).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)

    sc = pydicom.dcmread(path)
    source = dx_images[0]
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in dx_images}
    assert sc.PatientID == source.PatientID
    assert sc.SeriesDescription == SUMMARY_SERIES_DESCRIPTION
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 Lossless
    assert sc.Columns == SUMMARY_WIDTH and sc.Rows >= 768
    assert sc.PhotometricInterpretation == "YBR_RCT"  # RGB, reversibly transformed
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageComments == AI_RESULT_DISCLAIMER
    assert {item.ReferencedSOPInstanceUID for item in sc.ReferencedImageSequence} == {
        ds.SOPInstanceUID for ds in dx_images
    }
    (ours,) = [
        item
        for item in sc.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == model.name
    ]
    assert ours.SoftwareVersions == model.version
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"

    pixels = sc.pixel_array
    # The synthetic-data warning is drawn in yellow under the (yellow) disclaimer.
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < 80)
    yellow_rows = np.flatnonzero(yellow.any(axis=1))
    span = yellow_rows.max() - yellow_rows.min()
    assert (span > 45) if synthetic else (span < 35)


def test_summary_rows_hold_each_views_result(
    dx_images: list[Dataset], positive_finding: StudyFinding
) -> None:
    dx_images[1].InstanceNumber = 2
    rows = summary_rows(dx_images, positive_finding)
    assert rows == [
        ("1", "PA L", "wrist", "0.83", "fracture likely"),
        ("2", "PA L", "-", "-", "not assessed (image)"),
    ]


def test_render_summary_grows_with_many_views_and_differs_by_result(
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    negative_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    positive = render_summary(dx_images, positive_finding, algorithm)
    negative = render_summary(dx_images, negative_finding, algorithm)
    assert positive.shape == negative.shape == (768, SUMMARY_WIDTH, 3)
    assert not np.array_equal(positive, negative)
    red = (positive[..., 0] > 200) & (positive[..., 1] < 120)
    assert red.any(), "a likely fracture is drawn in red"
    green = (negative[..., 1] > 180) & (negative[..., 0] < 140)
    assert green.any(), "no fracture suspected is drawn in green"


def test_summary_rejects_foreign_images(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    other = copy.deepcopy(dx_images[0])
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="not to the finding's study"):
        _build([other], positive_finding, algorithm)
    with pytest.raises(ValueError, match="no source image"):
        render_summary(dx_images[:1], positive_finding, algorithm)


def test_one_glance_decision_points_of_the_region_and_notices(
    dx_images: list[Dataset], positive_finding: StudyFinding, synthetic_algorithm: AlgorithmIdentity
) -> None:
    text = _texts(dx_images, positive_finding, synthetic_algorithm)
    assert "FRACTURE LIKELY: left wrist (p=0.83)" in text
    points = "fracture suspected from probability 0.30, likely from 0.70."
    assert f"Operating points for the wrist: {points}" in text
    assert text.count("Operating point") == 1, "the study region's points only"
    assert AI_RESULT_DISCLAIMER.upper() in text and SYNTHETIC_DATA_WARNING in text
    assert f"Intended use: {INTENDED_USE}" in text
    assert "#2: Not assessed for fracture: stage 1 recognises none" in text


def test_a_study_not_assessed_shows_the_reason_and_no_operating_points(
    study_uid: str, dx_images: list[Dataset], algorithm: AlgorithmIdentity
) -> None:
    finding = study_finding(
        study_uid,
        [
            ViewResult(dx_images[0].SOPInstanceUID, not_assessed=UNREADABLE),
            ViewResult(
                dx_images[1].SOPInstanceUID,
                not_assessed=NotAssessed(Gate.HEADER, "the header names the chest"),
            ),
        ],
    )
    text = _texts(dx_images, finding, algorithm)
    assert "NOT ASSESSED for fracture" in text
    assert "Reason: the pixel data could not be decoded; the header names the chest" in text
    assert "not assessed (unreadable)" in text and "not assessed (header)" in text
    assert "Operating point" not in text and "dotted box" not in text


def test_no_suspected_level_is_offered_where_both_points_are_equal(
    study_uid: str, dx_images: list[Dataset], algorithm: AlgorithmIdentity
) -> None:
    finding = study_finding(
        study_uid,
        [ViewResult(ds.SOPInstanceUID, "wrist", 0.9, 0.8) for ds in dx_images],
        points=OperatingPoints(suspected=0.6, likely=0.6),
    )
    text = _texts(dx_images, finding, algorithm)
    assert "Operating point for the wrist: fracture likely from probability 0.60" in text
    assert "fracture suspected from" not in text and "dotted box" not in text


def test_an_unreadable_view_shows_in_the_table(
    study_uid: str, dx_images: list[Dataset], algorithm: AlgorithmIdentity
) -> None:
    finding = study_finding(
        study_uid,
        [
            ViewResult(dx_images[0].SOPInstanceUID, "wrist", 0.9, 0.1),
            ViewResult(dx_images[1].SOPInstanceUID, not_assessed=UNREADABLE),
        ],
    )
    rows = summary_rows(dx_images, finding)
    assert rows[1][-1] == "not assessed (unreadable)"
    assert "#2: Not assessed for fracture: the pixel data could not be decoded." in _texts(
        dx_images, finding, algorithm
    )
