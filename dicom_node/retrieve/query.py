"""Query/retrieve against the PACS for reprocessing: study-level C-FIND, then C-MOVE to us."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
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


#: Storage SOP classes we ask to receive over a C-GET association (its contexts are limited,
#: 128 in all): the radiographs we triage and the objects a PACS commonly keeps beside them.
GET_STORAGE_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map (our heatmaps)
)

#: A C-STORE handler (the SCP's), called for each instance the PACS sends back.
StoreHandler = Callable[[evt.Event], int]


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
    responses = assoc.send_c_move(identifier, move_destination, model)
    return _retrieve_result(assoc, responses, pacs, "C-MOVE", study_instance_uid)


def _retrieve_result(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    pacs: Destination,
    operation: str,
    study_instance_uid: str,
) -> MoveResult:
    """The final status of a C-MOVE or C-GET, its sub-operation counts, and the release."""
    last: Dataset | None = None
    try:
        for status, _ in responses:
            if getattr(status, "Status", None) is None:
                raise QueryError(f"{operation} from {pacs.name}: no response")
            last = status
    finally:
        if assoc.is_established:
            assoc.release()
    if last is None:
        raise QueryError(f"{operation} from {pacs.name}: no response")
    code = int(last.Status)
    result = MoveResult(
        completed=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(last.get("NumberOfWarningSuboperations", 0) or 0),
        status=code,
    )
    if code_to_category(code) not in ("Success", "Warning"):
        raise QueryError(f"{operation} of study {study_instance_uid} failed: status 0x{code:04X}")
    return result


def get_study(
    pacs: Destination,
    calling_ae_title: str,
    study_instance_uid: str,
    store: StoreHandler,
    timeout: float = 600,
) -> MoveResult:
    """C-GET one study: the PACS sends it back over our own association.

    The PACS needs to know our AE title, but no route back to us (unlike C-MOVE, it
    needs neither our host nor our port, so it works through NAT); each instance goes
    through ``store``, normally :meth:`dicom_node.receive.scp.StorageSCP.handle_store`, so it
    is stored, recorded and audited exactly like one that arrived by C-STORE.
    """
    model = StudyRootQueryRetrieveInformationModelGet
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = validate_uid(study_instance_uid, "StudyInstanceUID")
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(model)
    for sop_class in GET_STORAGE_CLASSES:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in GET_STORAGE_CLASSES]
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )
    if not assoc.is_established:
        raise QueryError(f"no association with {pacs.name} for C-GET")
    responses = assoc.send_c_get(identifier, model)
    return _retrieve_result(assoc, responses, pacs, "C-GET", study_instance_uid)
