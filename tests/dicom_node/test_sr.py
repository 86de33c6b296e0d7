"""The triage SR: content tree, references and dciodvfy validity."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.decision import ViewResult
from config.domain.findings import (
    AlgorithmIdentity,
    FractureType,
    Gate,
    ImageFinding,
    NotAssessed,
    StudyFinding,
)
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.codes import PRIVATE_CODES, finding_site, fracture_type_code
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sr import build_triage_sr, device_observer_uid
from tests.dicom_node.conftest import study_finding
from tests.peers import require_binary

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _build(images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity) -> Dataset:
    return build_triage_sr(
        images, finding, algorithm, NewInstance.new_series(900), institution_name="Test Hospital"
    )


def _walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _name(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _groups(sr: Dataset) -> list[Dataset]:
    return [item for item in _walk(sr.ContentSequence) if _name(item) == "Measurement Group"]


def _study(sr: Dataset) -> Dataset:
    """The study's result: TID 1500's Qualitative Evaluations container."""
    (container,) = [item for item in sr.ContentSequence if _name(item) == "Qualitative Evaluations"]
    return container


def _region_source(group: Dataset) -> tuple[str, str]:
    """The SOP Class and Instance UIDs of the image a planar ROI group's region is on."""
    (region,) = [item for item in group.ContentSequence if item.ValueType == "SCOORD"]
    (image,) = region.ContentSequence
    reference = image.ReferencedSOPSequence[0]
    return reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID


def _children(group: Dataset, name: str) -> list[Dataset]:
    return [item for item in group.ContentSequence if _name(item) == name]


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return concept.CodeValue, concept.CodingSchemeDesignator


def _texts(sr: Dataset) -> list[str]:
    return [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]


def _write(sr: Dataset, path: Path) -> Path:
    sr.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("synthetic", [False, True], ids=["real-data", "synthetic-data"])
def test_positive_sr_is_valid_and_complete(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    synthetic: bool,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    algorithm = dataclasses.replace(algorithm, trained_on_synthetic_data=synthetic)
    sr = _build(dx_images, positive_finding, algorithm)
    path = _write(sr, tmp_path / "sr.dcm")
    dciodvfy_clean(path)

    sr = pydicom.dcmread(path)
    source = dx_images[0]
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == positive_finding.study_instance_uid == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in dx_images}
    assert sr.SeriesDescription.startswith("AI")
    assert sr.Modality == "SR"
    assert sr.Manufacturer == algorithm.manufacturer
    assert sr.PatientName == source.PatientName
    assert sr.PatientID == source.PatientID
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"

    study = _study(sr)
    # The study's result: presence, site with laterality, level; sentences.
    assert _code(_children(study, "Fracture of bone")[0]) == ("52101004", "SCT")
    (site,) = _children(study, "Finding Site")
    assert _code(site) == ("74670003", "SCT")
    assert _code(_children(site, "Laterality")[0]) == ("7771000", "SCT")  # both views: L
    assert _code(_children(study, "Fracture triage level")[0]) == ("FXLIKELY", "99FXTRIAGE")
    assert any(
        item.TextValue.startswith("Study: ") and "0.83" in item.TextValue
        for item in _children(study, "Comment")
    )

    image_group, unsupported_group = _groups(sr)
    # The wrist image: its region (the whole view: no box here), probability inferred
    # from it, finding, level, algorithm.
    assert _region_source(image_group) == (source.SOPClassUID, source.SOPInstanceUID)
    assert _code(_children(image_group, "Finding")[0]) == ("125605004", "SCT")
    assert _code(_children(image_group, "Fracture of bone")[0]) == ("52101004", "SCT")
    (probability,) = _children(image_group, "Probability")
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.83)
    unit = probability.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    (inferred,) = [i for i in probability.ContentSequence if i.ValueType == "SCOORD"]
    assert inferred.RelationshipType == "INFERRED FROM"
    (region,) = _children(image_group, "Probability of the anatomic region")
    assert float(region.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.97)
    assert _children(image_group, "Algorithm Name")[0].TextValue == algorithm.name
    assert _children(image_group, "Algorithm Version")[0].TextValue == algorithm.version

    # The unsupported image: undetermined, a coded reason; no probability, site or level.
    assert _code(_children(unsupported_group, "Fracture of bone")[0]) == ("373068000", "SCT")
    reason = _children(unsupported_group, "Reason not assessed for fracture")[0]
    assert _code(reason) == ("FXGATEPIXELS", "99FXTRIAGE")
    for absent in (
        "Probability",
        "Probability of the anatomic region",
        "Finding Site",
        "Fracture triage level",
    ):
        assert not _children(unsupported_group, absent)
    assert any(
        "Not assessed for fracture: stage 1 recognises none" in item.TextValue
        for item in _children(unsupported_group, "Comment")
    )
    second = dx_images[1]
    assert _region_source(unsupported_group) == (second.SOPClassUID, second.SOPInstanceUID)

    # Image library and evidence reference every source.
    library = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "IMAGE" and _name(item) == "Source"
    }
    assert library == {ds.SOPInstanceUID for ds in dx_images}
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in dx_images}

    # Device observer: the algorithm.
    observer = {_name(item): item for item in sr.ContentSequence}
    assert observer["Device Observer Name"].TextValue == "fracture-triage"
    observer_uid = observer["Device Observer UID"].UID
    assert observer_uid == device_observer_uid(algorithm)

    texts = _texts(sr)
    assert AI_RESULT_DISCLAIMER in texts
    assert (SYNTHETIC_DATA_WARNING in texts) is synthetic


def test_negative_sr_is_valid(
    tmp_path: Path,
    dx_images: list[Dataset],
    negative_finding: StudyFinding,
    synthetic_algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    path = _write(_build(dx_images, negative_finding, synthetic_algorithm), tmp_path / "sr.dcm")
    dciodvfy_clean(path)
    sr = pydicom.dcmread(path)
    groups = _groups(sr)
    assert len(groups) == len(dx_images)
    for group in [_study(sr), *groups]:
        assert _code(_children(group, "Fracture of bone")[0]) == ("272519000", "SCT")  # Absent
        assert _code(_children(group, "Finding Site")[0]) == ("16953009", "SCT")  # elbow
        level = _children(group, "Fracture triage level")[0]
        assert _code(level) == ("FXNOTSUSPECTED", "99FXTRIAGE")
    probabilities = [
        float(item.MeasuredValueSequence[0].NumericValue)
        for group in groups
        for item in _children(group, "Probability")
    ]
    assert probabilities == pytest.approx([0.12, 0.05])
    assert any("0.12" in item.TextValue for item in _children(_study(sr), "Comment"))
    assert SYNTHETIC_DATA_WARNING in _texts(sr)


def test_an_assessed_finding_without_a_level_cannot_be_made(
    positive_finding: StudyFinding,
) -> None:
    with pytest.raises(ValueError, match="needs region, probability, level"):
        dataclasses.replace(positive_finding, level=None)


def test_sr_without_projection_descriptors(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    """Radiographs without Patient Orientation or Imager Pixel Spacing still get a report."""
    for ds in dx_images:
        ds.PatientOrientation = None
        del ds.ImagerPixelSpacing
    dciodvfy_clean(_write(_build(dx_images, positive_finding, algorithm), tmp_path / "sr.dcm"))


def test_dsrdump_prints_the_report(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    synthetic_algorithm: AlgorithmIdentity,
) -> None:
    dsrdump = require_binary("dsrdump", "dcmtk")  # fails under CI=true instead of skipping
    path = _write(_build(dx_images, positive_finding, synthetic_algorithm), tmp_path / "sr.dcm")
    result = subprocess.run(
        [dsrdump, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "E:" not in result.stderr
    assert "Fracture of bone" in result.stdout
    assert "Wrist joint" in result.stdout
    assert "UNVERIFIED" in result.stdout


def test_finding_site_codes_cover_every_body_part() -> None:
    assert (finding_site("wrist").value, finding_site("wrist").scheme_designator) == (
        "74670003",
        "SCT",
    )
    assert finding_site("elbow").value == "16953009"
    assert finding_site("knee").value == "72696002"  # any region a bundle names
    with pytest.raises(ValueError, match="'tail'"):
        finding_site("tail")


def test_private_codes_are_unique_short_and_in_the_conformance_statement() -> None:
    values = [code.value for code in PRIVATE_CODES]
    assert len(set(values)) == len(values)
    assert all(len(value) <= 16 and code.scheme_designator == "99FXTRIAGE"
               for value, code in zip(values, PRIVATE_CODES, strict=True))  # fmt: skip
    statement = (Path(__file__).parents[2] / "docs" / "conformance.md").read_text()
    for code in PRIVATE_CODES:
        assert f"`{code.value}`" in statement and code.meaning in statement


def test_image_finding_without_source_is_rejected(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    missing = positive_finding.images[1].sop_instance_uid
    with pytest.raises(ValueError, match=missing):
        _build(dx_images[:1], positive_finding, algorithm)


def test_source_from_another_study_is_rejected(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    other = generate_uid()
    dx_images[1].StudyInstanceUID = other
    with pytest.raises(ValueError, match=other):
        _build(dx_images, positive_finding, algorithm)


def test_empty_sources_are_rejected(
    positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    with pytest.raises(ValueError, match="source_images is empty"):
        _build([], positive_finding, algorithm)


def test_source_series_uid_is_rejected(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    series = dx_images[0].SeriesInstanceUID
    with pytest.raises(ValueError, match=series):
        build_triage_sr(
            dx_images, positive_finding, algorithm, NewInstance(series, generate_uid(), 900)
        )


def test_patient_identifiers_are_not_logged(
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="dicom_node")
    _build(dx_images, positive_finding, algorithm)
    assert caplog.records
    assert "Doe" not in caplog.text
    assert str(dx_images[0].PatientID) not in caplog.text


def test_an_unreadable_view_is_not_assessed_in_the_sr_with_its_coded_reason(
    study_uid: str, dx_images: list[Dataset], algorithm: AlgorithmIdentity
) -> None:
    unreadable = NotAssessed(Gate.UNREADABLE, "the pixel data could not be decoded")
    finding = study_finding(
        study_uid,
        [
            ViewResult(dx_images[0].SOPInstanceUID, "wrist", 0.9, 0.2),
            ViewResult(dx_images[1].SOPInstanceUID, not_assessed=unreadable),
        ],
    )
    assessed_view, unreadable_view = _groups(_build(dx_images, finding, algorithm))
    assert _code(_children(unreadable_view, "Reason not assessed for fracture")[0]) == (
        "FXGATEUNREADABLE",
        "99FXTRIAGE",
    )
    comments = [item.TextValue for item in _children(unreadable_view, "Comment")]
    assert comments == ["Not assessed for fracture: the pixel data could not be decoded."]
    assert not _children(unreadable_view, "Finding Site")
    assert _children(assessed_view, "Finding Site")


def test_a_flagged_views_fracture_type_is_coded_in_its_group(
    study_uid: str,
    dx_images: list[Dataset],
    algorithm: AlgorithmIdentity,
    tmp_path: Path,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    """A bundle with a type head: the flagged view's group names the type (FXTYPE, a code
    of the bundle's own type) and its probability (FXTYPEP); the negative view none."""
    first, second = dx_images
    kind = FractureType("23r-M", 0.71)
    finding = study_finding(
        study_uid,
        [
            ViewResult(first.SOPInstanceUID, "wrist", 0.97, 0.83, fracture_type=kind),
            # Below every point: the type head's call is dropped, never a claim.
            ViewResult(second.SOPInstanceUID, "wrist", 0.95, 0.01, fracture_type=kind),
        ],
    )
    assert finding.images[0].fracture_type == kind and finding.images[1].fracture_type is None
    sr = _build(dx_images, finding, algorithm)
    dciodvfy_clean(_write(sr, tmp_path / "sr.dcm"))
    flagged, negative = _groups(sr)
    (typed,) = _children(flagged, "Most probable fracture type")
    assert _code(typed) == (fracture_type_code("23r-M").value, "99FXTRIAGE")
    assert typed.ConceptCodeSequence[0].CodeMeaning == "23r-M"
    (probability,) = _children(flagged, "Probability of the fracture type")
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.71)
    assert not _children(negative, "Most probable fracture type")
    assert any("Most probable fracture type: 23r-M" in text for text in _texts(sr))


def test_a_fracture_type_on_a_view_not_flagged_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="only a positive view has a fracture type"):
        ImageFinding("1.2.3", not_assessed=NotAssessed(Gate.PIXELS, "x"),
                     fracture_type=FractureType("Oblique fracture", 0.5))  # fmt: skip
    assert fracture_type_code("Comminuted fracture") == fracture_type_code("Comminuted fracture")
    assert len(fracture_type_code("a much longer fracture type name").value) <= 16
