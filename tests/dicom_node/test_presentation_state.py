"""The GSPS: boxes on positive views, texts, source VOI, references and dciodvfy validity."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.decision import ViewResult
from config.domain.findings import AlgorithmIdentity, BoundingBox, Gate, NotAssessed, StudyFinding
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.presentation_state import (
    DASHED_LINE_PATTERN,
    GSPS_LAYER,
    LINE_THICKNESS,
    build_triage_gsps,
    gsps_text,
)
from dicom_node.outputs.sr import box_polyline
from tests.dicom_node.conftest import assessed, not_assessed, study_finding
from tests.peers import require_binary

GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture
def finding(study_uid: str, dx_images: list[Dataset]) -> StudyFinding:
    first, second = dx_images
    return study_finding(
        study_uid,
        [
            ViewResult(first.SOPInstanceUID, "wrist", 0.9, 0.8, BoundingBox(10, 20, 100, 120)),
            ViewResult(second.SOPInstanceUID, "wrist", 0.9, 0.1, BoundingBox(30, 30, 60, 60)),
        ],
        aggregation="mean",
    )


def _build(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity) -> Dataset:
    return build_triage_gsps(images, finding, algorithm, NewInstance.new_series(9004))


def test_gsps_is_valid_with_a_box_on_the_positive_view_only(
    tmp_path: Path,
    dx_images: list[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    path = tmp_path / "gsps.dcm"
    _build(dx_images, finding, algorithm).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    gsps = pydicom.dcmread(path)

    assert gsps.SOPClassUID == GSPS_CLASS
    assert gsps.StudyInstanceUID == dx_images[0].StudyInstanceUID
    assert gsps.SeriesDescription.startswith("AI")
    assert gsps.Modality == "PR"
    referenced = {
        image.ReferencedSOPInstanceUID
        for series in gsps.ReferencedSeriesSequence
        for image in series.ReferencedImageSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in dx_images}
    # Window/level of the source, so bone looks like bone.
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == 2048 and float(voi.WindowWidth) == 4096
    assert gsps.GraphicLayerSequence[0].GraphicLayer == GSPS_LAYER

    by_image = {
        annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID: annotation
        for annotation in gsps.GraphicAnnotationSequence
    }
    positive = by_image[dx_images[0].SOPInstanceUID]
    (graphic,) = positive.GraphicObjectSequence
    assert graphic.GraphicType == "POLYLINE"
    assert graphic.GraphicAnnotationUnits == "PIXEL"
    points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
    assert points.tolist() == box_polyline(finding.images[0].box, 256, 256).tolist()
    assert positive.TextObjectSequence[0].UnformattedTextValue == "AI: fracture likely p=0.80"
    negative = by_image[dx_images[1].SOPInstanceUID]
    assert "GraphicObjectSequence" not in negative
    assert negative.TextObjectSequence[0].UnformattedTextValue == (
        "AI: no fracture suspected p=0.10"
    )
    ours = [
        item
        for item in gsps.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == algorithm.name
    ]
    assert len(ours) == 1


def test_suspected_box_is_dashed_and_likely_box_solid(
    tmp_path: Path,
    dx_images: list[Dataset],
    study_uid: str,
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    """Like the annotated captures: dashed for suspected, solid for likely (Line Style)."""
    likely, suspected = dx_images
    finding = study_finding(
        study_uid,
        [
            ViewResult(likely.SOPInstanceUID, "wrist", 0.9, 0.8, BoundingBox(10, 20, 100, 120)),
            ViewResult(suspected.SOPInstanceUID, "wrist", 0.9, 0.4, BoundingBox(30, 30, 60, 60)),
        ],
    )
    path = tmp_path / "gsps.dcm"
    _build(dx_images, finding, algorithm).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)  # dciodvfy checks the Line Style Sequence Macro
    gsps = pydicom.dcmread(path)

    styles = {
        annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID: (
            annotation.GraphicObjectSequence[0].LineStyleSequence[0]
        )
        for annotation in gsps.GraphicAnnotationSequence
    }
    solid, dashed = styles[likely.SOPInstanceUID], styles[suspected.SOPInstanceUID]
    assert solid.LineDashingStyle == "SOLID" and "LinePattern" not in solid
    assert dashed.LineDashingStyle == "DASHED"
    assert dashed.LinePattern == DASHED_LINE_PATTERN
    for style in (solid, dashed):
        assert style.LineThickness == LINE_THICKNESS
        assert style.PatternOnOpacity == 1.0
        assert style.ShadowStyle == "OFF"
    # The text still says which level a viewer without line styles shows.
    texts = {
        annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID: (
            annotation.TextObjectSequence[0].UnformattedTextValue
        )
        for annotation in gsps.GraphicAnnotationSequence
    }
    assert texts[suspected.SOPInstanceUID] == "AI: fracture suspected p=0.40"
    assert texts[likely.SOPInstanceUID] == "AI: fracture likely p=0.80"


def test_dcmtk_renders_the_gsps_over_the_source(
    tmp_path: Path,
    dx_images: list[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    """dcmp2pgm applies the presentation state (VOI, graphics) to the original image."""
    binary = require_binary("dcmp2pgm", "dcmtk")  # fails under CI=true instead of skipping
    source = tmp_path / "source.dcm"
    dx_images[0].save_as(source, enforce_file_format=True)
    gsps = tmp_path / "gsps.dcm"
    _build(dx_images, finding, algorithm).save_as(gsps, enforce_file_format=True)
    out = tmp_path / "rendered.pgm"
    result = subprocess.run(
        [binary, "-p", str(gsps), str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 256 * 256


def test_gsps_text() -> None:
    assert gsps_text(not_assessed("1.2.3")) == "AI: not assessed (image)"
    unreadable = NotAssessed(Gate.UNREADABLE, "the pixel data could not be decoded")
    assert gsps_text(not_assessed("1.2.3", unreadable)) == "AI: not assessed (unreadable)"
    suspected = assessed("1.2.3", "hand", 0.456)
    assert gsps_text(suspected) == "AI: fracture suspected p=0.46"


def test_gsps_rejects_foreign_sources(
    dx_images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    with pytest.raises(ValueError, match="has no source image"):
        _build(dx_images[:1], finding, algorithm)
    with pytest.raises(ValueError, match="is a source series"):
        new = NewInstance(dx_images[0].SeriesInstanceUID, generate_uid(), 1)
        build_triage_gsps(dx_images, finding, algorithm, new)


@pytest.mark.parametrize(
    ("photometric", "shape"), [("MONOCHROME2", "IDENTITY"), ("MONOCHROME1", "INVERSE")]
)
def test_monochrome1_views_get_the_inverse_presentation_lut(
    tmp_path: Path,
    dx_images: list[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    photometric: str,
    shape: str,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    for ds in dx_images:
        ds.PhotometricInterpretation = photometric
    path = tmp_path / "gsps.dcm"
    _build(dx_images, finding, algorithm).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    assert pydicom.dcmread(path).PresentationLUTShape == shape
