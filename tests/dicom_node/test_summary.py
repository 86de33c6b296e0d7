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

from config.domain.findings import AlgorithmIdentity, StudyFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.summary import (
    SUMMARY_WIDTH,
    build_summary_secondary_capture,
    render_summary,
    summary_rows,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _build(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity) -> Dataset:
    return build_summary_secondary_capture(
        images,
        finding,
        algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9003,
        instance_number=1,
    )


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
    assert sc.SeriesDescription.startswith("AI")
    assert sc.Columns == SUMMARY_WIDTH and sc.Rows >= 768
    assert sc.PhotometricInterpretation == "RGB"
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
        ("2", "PA L", "-", "-", "not assessed"),
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


def test_summary_rejects_foreign_images_and_bad_uids(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    other = copy.deepcopy(dx_images[0])
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="is not of study"):
        _build([other], positive_finding, algorithm)
    with pytest.raises(ValueError, match="no source image"):
        render_summary(dx_images[:1], positive_finding, algorithm)
    with pytest.raises(ValueError, match="not a valid UID"):
        build_summary_secondary_capture(
            dx_images,
            positive_finding,
            algorithm,
            series_instance_uid="bad uid",
            sop_instance_uid=generate_uid(),
            series_number=1,
            instance_number=1,
        )
