"""Query/retrieve against the PACS for reprocessing: study-level C-FIND, then C-MOVE to us."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from config import Destination
from dicom_node.uids import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)


class QueryError(RuntimeError):
    """The PACS could not be queried (no association, or a failure status)."""


@dataclass(frozen=True)
class StudyQuery:
    """Study-level matching keys; None matches anything."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None

    def identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.StudyDate = _date_range(self.date_from, self.date_to)
        ds.ModalitiesInStudy = self.modality or ""
        ds.AccessionNumber = self.accession_number or ""
        ds.PatientID = self.patient_id or ""
        return ds


@dataclass(frozen=True)
class StudyMatch:
    study_instance_uid: str
    study_date: str | None
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class MoveResult:
    completed: int
    failed: int
    warning: int
    status: int


def _date_range(start: dt.date | None, end: dt.date | None) -> str:
    if start is None and end is None:
        return ""
    left = start.strftime("%Y%m%d") if start else ""
    right = end.strftime("%Y%m%d") if end else ""
    return f"{left}-{right}"


def _associate(pacs: Destination, calling_ae_title: str, model: str, timeout: float) -> Association:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(model)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise QueryError(f"no association with {pacs.name} for {model}")
    return assoc


def find_studies(
    pacs: Destination, calling_ae_title: str, query: StudyQuery, timeout: float = 60
) -> list[StudyMatch]:
    """Study-level C-FIND; returns the matching studies' UIDs (no patient data)."""
    model = StudyRootQueryRetrieveInformationModelFind
    assoc = _associate(pacs, calling_ae_title, model, timeout)
    matches: list[StudyMatch] = []
    try:
        for status, identifier in assoc.send_c_find(query.identifier(), model):
            code = getattr(status, "Status", None)
            if code is None:
                raise QueryError(f"C-FIND to {pacs.name}: no response")
            category = code_to_category(code)
            if category == "Pending" and identifier is not None:
                try:
                    uid = validate_uid(identifier.get("StudyInstanceUID"), "StudyInstanceUID")
                except InvalidUIDError:
                    logger.warning("C-FIND match from %s without a valid study UID", pacs.name)
                    continue
                modalities = identifier.get("ModalitiesInStudy") or ()
                if isinstance(modalities, str):
                    modalities = (modalities,)
                matches.append(
                    StudyMatch(uid, identifier.get("StudyDate") or None, tuple(modalities))
                )
            elif category not in ("Success", "Pending"):
                raise QueryError(f"C-FIND to {pacs.name} failed: status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def move_study(
    pacs: Destination,
    calling_ae_title: str,
    study_instance_uid: str,
    move_destination: str,
    timeout: float = 600,
) -> MoveResult:
    """C-MOVE one study from the PACS to ``move_destination`` (normally our own AE)."""
    model = StudyRootQueryRetrieveInformationModelMove
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = validate_uid(study_instance_uid, "StudyInstanceUID")
    assoc = _associate(pacs, calling_ae_title, model, timeout)
    last: Dataset | None = None
    try:
        for status, _ in assoc.send_c_move(identifier, move_destination, model):
            if getattr(status, "Status", None) is None:
                raise QueryError(f"C-MOVE from {pacs.name}: no response")
            last = status
    finally:
        if assoc.is_established:
            assoc.release()
    if last is None:
        raise QueryError(f"C-MOVE from {pacs.name}: no response")
    code = int(last.Status)
    result = MoveResult(
        completed=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(last.get("NumberOfWarningSuboperations", 0) or 0),
        status=code,
    )
    if code_to_category(code) not in ("Success", "Warning"):
        raise QueryError(f"C-MOVE of study {study_instance_uid} failed: status 0x{code:04X}")
    return result
