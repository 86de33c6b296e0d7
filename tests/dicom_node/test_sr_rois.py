"""The triage SR's planar ROIs, IHE AI Results conventions and predecessor documents."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.decision import ViewResult
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    StudyFinding,
)
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sr import box_polyline, build_triage_sr
from tests.dicom_node.conftest import study_finding
from tests.peers import require_binary

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _name(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _groups(sr: Dataset) -> list[Dataset]:
    return [item for item in _walk(sr.ContentSequence) if _name(item) == "Measurement Group"]


def _scoords(group: Dataset) -> list[Dataset]:
    return [item for item in group.ContentSequence if item.ValueType == "SCOORD"]


@pytest.fixture
def boxed_finding(study_uid: str, dx_images: list[Dataset]) -> StudyFinding:
    """View 1 likely (solid), view 2 suspected, both with boxes; study suspected."""
    first, second = dx_images
    return study_finding(
        study_uid,
        [
            ViewResult(first.SOPInstanceUID, "wrist", 0.97, 0.8, BoundingBox(10, 20, 100, 120)),
            ViewResult(second.SOPInstanceUID, "wrist", 0.95, 0.4, BoundingBox(0, 0, 255, 255)),
        ],
        aggregation="mean",
    )


def _build(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw):
    return build_triage_sr(images, finding, algorithm, NewInstance.new_series(900), **kw)


def _level(group: Dataset) -> str:
    (item,) = [i for i in group.ContentSequence if _name(i) == "Fracture triage level"]
    return item.ConceptCodeSequence[0].CodeMeaning


def test_box_polyline_runs_along_the_outer_pixel_edges() -> None:
    line = box_polyline(BoundingBox(10, 20, 100, 120), rows=256, columns=256)
    assert line.tolist() == [[20, 10], [121, 10], [121, 101], [20, 101], [20, 10]]
    clipped = box_polyline(BoundingBox(0, 0, 300, 300), rows=256, columns=200)
    assert clipped.max(axis=0).tolist() == [200, 256]


def test_positive_views_get_planar_rois_on_their_source_image(
    tmp_path: Path,
    dx_images: list[Dataset],
    boxed_finding: StudyFinding,
    synthetic_algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    sr = _build(dx_images, boxed_finding, synthetic_algorithm)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    sr = pydicom.dcmread(path)

    first_group, second_group = _groups(sr)
    # The study's result has no image region: it is in TID 1500's Qualitative Evaluations.
    (study,) = [i for i in sr.ContentSequence if _name(i) == "Qualitative Evaluations"]
    assert not _scoords(study)
    assert _level(study) == "Fracture suspected"
    for group, source, box, level in (
        (first_group, dx_images[0], boxed_finding.images[0].box, "Fracture likely"),
        (second_group, dx_images[1], boxed_finding.images[1].box, "Fracture suspected"),
    ):
        (scoord,) = _scoords(group)
        assert _name(scoord) == "Image Region"
        assert scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        assert points.tolist() == box_polyline(box, 256, 256).tolist()
        (selected,) = scoord.ContentSequence
        ref = selected.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        # The ROI carries the finding, its presence, the probability and the level.
        names = [_name(item) for item in group.ContentSequence]
        for expected in ("Finding", "Fracture of bone", "Probability", "Finding Site"):
            assert expected in names
        assert _level(group) == level
        # The probability is inferred from the region (how OHIF lists a planar ROI).
        (probability,) = [i for i in group.ContentSequence if _name(i) == "Probability"]
        (inferred,) = probability.ContentSequence
        assert inferred.RelationshipType == "INFERRED FROM"
        assert inferred.GraphicData == scoord.GraphicData


def test_dsrdump_shows_the_roi_coordinates_and_dsr2html_renders(
    tmp_path: Path,
    dx_images: list[Dataset],
    boxed_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    dsrdump = require_binary("dsrdump", "dcmtk")
    dsr2html = require_binary("dsr2html", "dcmtk")
    path = tmp_path / "sr.dcm"
    _build(dx_images, boxed_finding, algorithm).save_as(path, enforce_file_format=True)
    dump = subprocess.run(
        [dsrdump, "+Pl", str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert 'SCOORD:(,,"Image Region")=(POLYLINE,20/10,121/10,121/101,20/101,20/10)' in dump
    assert 'SCOORD:(,,"Image Region")=(POLYLINE,0/0,256/0,256/256,0/256,0/0)' in dump
    html = subprocess.run(
        [dsr2html, str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "Polyline" in html and "Fracture of bone" in html and "Fracture likely" in html
    # Sentences for readers, one per item: the finding, then the operating points.
    assert "Fracture likely in the left wrist (probability 0.80)." in html
    assert "Operating points: fracture suspected from probability 0.30, likely from 0.70." in html


def test_negative_views_are_outlined_whole_and_switched_off_rois_have_none(
    dx_images: list[Dataset],
    boxed_finding: StudyFinding,
    negative_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    boxed_negative = dataclasses.replace(
        negative_finding,
        images=tuple(
            dataclasses.replace(i, box=BoundingBox(5, 5, 50, 50)) for i in negative_finding.images
        ),
    )
    # A negative view's box is not drawn: its region is the whole view.
    whole = box_polyline(BoundingBox(0, 0, 255, 255), 256, 256).tolist()
    for group in _groups(_build(dx_images, boxed_negative, algorithm)):
        (scoord,) = _scoords(group)
        assert np.asarray(scoord.GraphicData).reshape(-1, 2).tolist() == whole
    switched_off = _build(dx_images, boxed_finding, algorithm, include_rois=False)
    assert not [i for i in _walk(switched_off.ContentSequence) if i.ValueType == "SCOORD"]
    assert len(_groups(switched_off)) == 2


def test_ai_results_conventions(
    dx_images: list[Dataset], boxed_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    sr = _build(dx_images, boxed_finding, algorithm)
    assert sr.SeriesDescription.startswith("AI")
    assert sr.VerificationFlag == "UNVERIFIED"
    ours = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == algorithm.name
    ]
    assert len(ours) == 1
    assert ours[0].Manufacturer == algorithm.manufacturer
    assert ours[0].SoftwareVersions == algorithm.version
    purpose = ours[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")


def test_a_rerun_report_names_the_report_it_supersedes(
    tmp_path: Path,
    dx_images: list[Dataset],
    boxed_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    first = _build(dx_images, boxed_finding, algorithm)
    second = _build(dx_images, boxed_finding, algorithm, previous_versions=[first])
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    second = pydicom.dcmread(path)
    assert second.SeriesInstanceUID != first.SeriesInstanceUID
    (study,) = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert sop.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert sop.ReferencedSOPClassUID == COMPREHENSIVE_3D_SR

    other_study = Dataset()
    other_study.StudyInstanceUID = generate_uid()
    other_study.SOPInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="belongs to study"):
        _build(dx_images, boxed_finding, algorithm, previous_versions=[other_study])
