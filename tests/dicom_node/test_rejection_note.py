"""IOCM rejection notes for superseded AI objects: valid KOS, every object referenced."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.decision import ViewResult
from config.domain.findings import AlgorithmIdentity
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.rejection_note import (
    REJECTION_NOTE_SERIES_DESCRIPTION,
    build_rejection_note,
)
from dicom_node.outputs.sr import build_triage_sr, device_observer_uid
from tests.dicom_node.conftest import PATIENT_ID, study_finding

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture
def superseded(
    study_uid: str, dx_images: list[Dataset], algorithm: AlgorithmIdentity
) -> list[Dataset]:
    """What an earlier run left in the PACS: an SR and a GSPS."""
    finding = study_finding(
        study_uid, [ViewResult(ds.SOPInstanceUID, "wrist", 0.9, 0.2) for ds in dx_images]
    )
    sr = build_triage_sr(dx_images, finding, algorithm, NewInstance.new_series(9001))
    gsps = build_triage_gsps(dx_images, finding, algorithm, NewInstance.new_series(9004))
    return [sr, gsps]


def _note(
    superseded: list[Dataset],
    algorithm: AlgorithmIdentity,
    sop_instance_uid: str | None = None,
    reason: str = "Superseded by fracture-wrist-densenet 2.0.0 (triage run 7)",
) -> Dataset:
    new = NewInstance(
        generate_uid(),
        sop_instance_uid or generate_uid(),
        9010,
        1,
        dt.datetime(2026, 11, 22, 10, 30),
    )
    return build_rejection_note(superseded, algorithm, new, reason=reason)


def test_rejection_note_is_a_valid_iocm_kos_naming_every_superseded_object(
    tmp_path: Path,
    superseded: list[Dataset],
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    newer = AlgorithmIdentity(name=algorithm.name, version="2.0.0")
    path = tmp_path / "kos.dcm"
    _note(superseded, newer).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    note = pydicom.dcmread(path)

    assert note.SOPClassUID == KOS_CLASS and note.Modality == "KO"
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    assert title.CodeMeaning == "Rejected for Quality Reasons"
    assert note.StudyInstanceUID == superseded[0].StudyInstanceUID
    assert note.PatientID == PATIENT_ID  # inherited from the rejected objects
    assert note.SeriesDescription == REJECTION_NOTE_SERIES_DESCRIPTION
    assert note.SeriesDescription.startswith("AI")
    assert (note.SeriesDate, note.SeriesTime[:6]) == ("20261122", "103000")

    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in note.ContentSequence
        if item.ValueType in ("COMPOSITE", "IMAGE")
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in superseded}
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == referenced
    texts = [
        i.TextValue
        for i in note.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]  # Key Object Description
    assert texts == ["Superseded by fracture-wrist-densenet 2.0.0 (triage run 7)"]
    observer_uids = [i.UID for i in note.ContentSequence if i.ValueType == "UIDREF"]
    assert observer_uids == [device_observer_uid(newer)]
    assert any(
        item.get("SoftwareVersions") == "2.0.0" for item in note.ContributingEquipmentSequence
    )


def test_rejection_note_checks_its_inputs(
    superseded: list[Dataset], algorithm: AlgorithmIdentity, dx_images: list[Dataset]
) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        _note([], algorithm)
    with pytest.raises(ValueError, match="is a rejected object's SOP Instance UID"):
        _note(superseded, algorithm, sop_instance_uid=str(superseded[0].SOPInstanceUID))
    with pytest.raises(ValueError, match="reason"):
        _note(superseded, algorithm, reason="  ")
    other_study = copy.deepcopy(dx_images[0])
    other_study.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="2 studies"):
        _note([*superseded, other_study], algorithm)
