"""The storage SCP: C-ECHO and C-STORE into the durable store and the audit DB.

An instance is answered Success only after its file is fsynced under its final
name and its row and audit event are committed. Anything else gets a failure
status and an audit event; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from io import BytesIO
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from pydicom import Dataset, dcmread
from pydicom import uid as transfer_syntax
from pydicom.encaps import generate_fragments
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from config.logs import configure_logging
from db.audit import AuditEventType, AuditLog, Outcome
from db.engine import engine_from_settings, make_session_factory
from db.repositories import ReceivedInstance, RecordOutcome, StudyRepository
from dicom_node.receive.fastpath import Listener, ended_by_transport, listen, reading_a_pdu
from dicom_node.receive.receivers import (
    ReceiverProcesses,
    SharedCounter,
    become_receiver_process,
)
from dicom_node.receive.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from dicom_node.receive.wire import (
    ReceiveBudget,
    ReceiveLimits,
    TransportEvent,
    TransportEventKind,
)
from dicom_node.store import InstanceStore, StoredFile
from dicom_node.tls import server_context
from dicom_node.uids import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

#: Storage SOP classes the models can read: CR and DX (for presentation and processing).
TRIAGEABLE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    }
)

#: Transfer syntaxes accepted for every storage SOP class (native and the common compressed).
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    transfer_syntax.ExplicitVRLittleEndian,
    transfer_syntax.ImplicitVRLittleEndian,
    transfer_syntax.DeflatedExplicitVRLittleEndian,
    transfer_syntax.RLELossless,
    transfer_syntax.JPEGBaseline8Bit,
    transfer_syntax.JPEGExtended12Bit,
    transfer_syntax.JPEGLossless,
    transfer_syntax.JPEGLosslessSV1,
    transfer_syntax.JPEGLSLossless,
    transfer_syntax.JPEGLSNearLossless,
    transfer_syntax.JPEG2000Lossless,
    transfer_syntax.JPEG2000,
)


class StoreRefusedError(Exception):
    """An instance is refused; ``status`` is the DIMSE failure status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: The study the refused instance claims to belong to, when its UID could be read.
        self.study_instance_uid: str | None = None


def receive_limits(settings: Settings) -> ReceiveLimits:
    """The transport's limits from the settings (docs/security.md, docs/conformance.md)."""
    return ReceiveLimits(
        association_request_timeout=settings.association_request_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        max_pdata_length=settings.pdu_length_announced,
        connection_budget=settings.receive_connection_budget_bytes,
        max_pending_connections=settings.max_pending_connections,
    )


class StorageSCP:
    """A pynetdicom storage SCP wired to an :class:`InstanceStore` and the audit DB."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        store: InstanceStore,
        *,
        handed_connections: socket.socket | None = None,
        bulk_reads: bool = True,
        probes: SharedCounter | None = None,
    ) -> None:
        """``handed_connections``: a receiver process's SCP, serving the connections the
        node's SCP hands it on this channel instead of listening (dicom_node.receive.receivers).

        ``probes``: the count of connections closed before they sent a byte, shared
        with the receiver processes (a receiver gets its node's).

        ``bulk_reads=False``: PDUs read in pynetdicom's 4 KiB steps, only to compare
        (benchmarks.ingest).
        """
        self._settings = settings
        self._sessions = session_factory
        self._store = store
        self._handed_connections = handed_connections
        self._bulk_reads = bulk_reads
        self._budget = ReceiveBudget(settings.receive_budget_bytes)
        self._listener: Listener | None = None
        self._receivers: ReceiverProcesses | None = None
        self._probes = probes if probes is not None else SharedCounter(settings.scp_processes)

    # -- association life cycle -------------------------------------------------------

    def build_ae(self) -> AE:
        ae = AE(ae_title=self._settings.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        if self._settings.allowed_calling_ae_titles:
            ae.require_calling_aet = list(self._settings.allowed_calling_ae_titles)
        ae.maximum_associations = self._settings.max_associations
        ae.maximum_pdu_size = self._settings.pdu_length_announced
        # ARTIM once associated (awaiting a peer's close), and the idle time between PDUs;
        # the transport applies both before the association exists and within a PDU.
        ae.acse_timeout = self._settings.association_request_timeout_seconds
        ae.network_timeout = self._settings.idle_timeout_seconds
        return ae

    def start(self) -> tuple[str, int]:
        """Start listening in background threads; return the bound (address, port)."""
        if self._listener is not None:
            raise RuntimeError("the SCP is already running")
        self._store.ensure()  # the disk-space checks look at it before the first write
        tls = server_context(self._settings.tls) if self._settings.tls else None
        self._listener = listen(
            self.build_ae(),
            (self._settings.bind_address, self._settings.port),
            evt_handlers=self._event_handlers(),
            ssl_context=tls,
            limits=receive_limits(self._settings),
            budget=self._budget,
            on_event=self.handle_transport_event,
            bulk_reads=self._bulk_reads,
            channel=self._handed_connections,
        )
        host, port = self._listener.address
        # A receiver process has no port of its own and starts no receivers.
        children = 0 if self._handed_connections else self._settings.scp_processes - 1
        if children:
            self._start_receivers(port, children)
        logger.info(
            "storage SCP %s listening on %s:%s%s%s",
            self._settings.ae_title,
            host,
            port,
            " (TLS)" if tls else "",
            f" in {children + 1} processes" if children else "",
        )
        return host, port

    def _event_handlers(self) -> list[tuple[evt.EventType, Any]]:
        return [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_CONN_CLOSE, self.handle_connection_closed),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_ABORTED, self.handle_aborted),
        ]

    def _start_receivers(self, port: int, children: int) -> None:
        assert self._listener is not None
        port_settings = self._settings.model_copy(update={"port": port})
        self._receivers = ReceiverProcesses(
            port_settings, children, serve_handed_connections, (self._probes,)
        )
        try:
            self._receivers.start()
        except Exception:
            self.stop()
            raise
        self._listener.hand_off_with(self._receivers.hand_off)

    @property
    def receiver_pids(self) -> list[int]:
        """The process IDs of the receiver processes (none with ``scp_processes = 1``)."""
        return self._receivers.pids if self._receivers is not None else []

    @property
    def connection_probes(self) -> int:
        """Connections closed before they sent a byte (health checks, port scans), in
        this SCP and its receiver processes since it was made."""
        return self._probes.value

    @property
    def receiving(self) -> tuple[int, int]:
        """(processes receiving now, processes that should be): the node's own listener
        and its receiver processes."""
        expected = 1 + (0 if self._handed_connections else self._settings.scp_processes - 1)
        if self._listener is None:
            return 0, expected
        return 1 + (self._receivers.alive if self._receivers is not None else 0), expected

    @property
    def receive_budget(self) -> ReceiveBudget:
        """This process's receive budget (what its associations hold right now)."""
        return self._budget

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.hand_off_with(None)  # from now on the node serves what arrives
        if self._receivers is not None:
            self._receivers.stop()
            self._receivers = None
        if self._listener is not None:
            self._listener.stop()  # closes the port; running associations end on their own
            self._listener = None

    # -- handlers -------------------------------------------------------------------

    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_requested(self, event: evt.Event) -> None:
        """Reject before negotiation: a calling AE from a host not allowed for it, or a
        store whose disk is nearly full (better than failing half-way through a study)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        allowed_hosts = self._settings.allowed_calling_hosts.get(calling)
        if allowed_hosts is not None and address not in allowed_hosts:
            # rejected-permanent, service-user, calling AE title not recognised
            self._reject(
                event, (0x01, 0x01, 0x03), calling, f"host {address} not allowed for {calling}"
            )
            return
        free = self._store.free_bytes()
        if free < self._settings.min_free_disk_bytes:
            # rejected-transient, service-provider (presentation), local limit exceeded
            self._reject(
                event, (0x02, 0x03, 0x02), calling, f"store disk nearly full ({free} bytes free)"
            )

    def _reject(
        self, event: evt.Event, reason: tuple[int, int, int], calling: str, why: str
    ) -> None:
        event.assoc.acse.send_reject(*reason)
        self._audit_association(
            event, AuditEventType.ASSOCIATION_REJECTED, Outcome.FAILURE, actor=calling, reason=why
        )
        event.assoc.kill()

    def handle_connection_closed(self, event: evt.Event) -> None:
        """Audit a connection that closed without a valid association request.

        Garbage on the port, a port scan, or a peer speaking another protocol: pynetdicom
        drops it; the audit trail records who it was.
        """
        if event.assoc.requestor.primitive is not None:
            return  # a real association request: accepted/rejected events tell its story
        address = event.assoc.requestor.address
        with self._sessions.begin() as session:
            AuditLog(session).record(
                AuditEventType.CONNECTION_DROPPED,
                Outcome.FAILURE,
                address=str(address),
                reason="connection closed without a valid A-ASSOCIATE-RQ",
            )
        logger.warning("connection from %s closed without a valid association request", address)

    def handle_transport_event(self, event: TransportEvent) -> None:
        """Audit what the transport refused: a connection closed before it associated
        (ARTIM, TLS, a first PDU that is not a request, too many waiting) or an
        association it aborted (a PDU over its cap, a byte budget, a PDU too slow).
        A connection that closed before sending a byte is only counted."""
        if event.kind is TransportEventKind.PROBED:
            # A health check or a port scan: nothing to audit (it would bury the real
            # failures), counted for the metrics endpoint instead.
            self._probes.add()
            logger.debug("connection from %s closed before sending a byte", event.address)
            return
        kind = (
            AuditEventType.CONNECTION_DROPPED
            if event.kind is TransportEventKind.DROPPED
            else AuditEventType.ASSOCIATION_ABORTED
        )
        extra = {"connections": event.connections} if event.connections > 1 else {}
        with self._sessions.begin() as session:
            AuditLog(session).record(
                kind,
                Outcome.FAILURE,
                actor=event.calling_ae_title,
                address=event.address,
                port=event.port,
                reason=event.reason,
                receiver_pid=os.getpid(),
                **extra,
            )
        logger.warning("%s from %s: %s", kind, event.address, event.reason)

    def handle_aborted(self, event: evt.Event) -> None:
        """Audit the abort of an association idle for longer than ``idle_timeout_seconds``
        (pynetdicom's network timeout; aborts by the peer are not the node's outcome, and
        those the transport decided it audits itself: handle_transport_event)."""
        if not event.assoc.dul.idle_timer_expired() or ended_by_transport(event.assoc):
            return
        what = "a PDU not received in full" if reading_a_pdu(event.assoc) else "no PDU"
        seconds = self._settings.idle_timeout_seconds
        self._audit_association(
            event,
            AuditEventType.ASSOCIATION_ABORTED,
            Outcome.FAILURE,
            reason=f"{what} within idle_timeout_seconds ({seconds:g} s)",
        )

    def handle_accepted(self, event: evt.Event) -> None:
        # Proposed SOP classes (or transfer syntaxes) we do not accept are refused per
        # presentation context; the audit names them so a refused modality is visible.
        refused = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        self._audit_association(
            event, AuditEventType.ASSOCIATION_ACCEPTED, Outcome.SUCCESS, refused_contexts=refused
        )

    def handle_rejected(self, event: evt.Event) -> None:
        self._audit_association(event, AuditEventType.ASSOCIATION_REJECTED, Outcome.FAILURE)

    def _audit_association(
        self, event: evt.Event, kind: AuditEventType, outcome: Outcome, **detail: object
    ) -> None:
        requestor = event.assoc.requestor
        actor = detail.pop("actor", None) or requestor.ae_title
        with self._sessions.begin() as session:
            AuditLog(session).record(
                kind,
                outcome,
                actor=actor,
                address=str(requestor.address),
                port=int(requestor.port),
                receiver_pid=os.getpid(),  # which receiving process (scp_processes > 1)
                **detail,
            )
        logger.info("%s from %s at %s", kind, actor, requestor.address)

    def handle_store(self, event: evt.Event) -> int:
        calling_ae = event.assoc.requestor.ae_title
        request_sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            return self._store_instance(event, calling_ae)
        except StoreRefusedError as refused:
            self._audit_refusal(
                calling_ae,
                request_sop_uid,
                refused.reason,
                refused.status,
                study_uid=refused.study_instance_uid,
            )
            return refused.status
        except Exception:
            # Never crash the association thread; the peer gets a failure and may retry.
            logger.exception("storing SOP Instance %s failed", _loggable_uid(request_sop_uid))
            self._audit_refusal(calling_ae, request_sop_uid, "internal error", OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES

    def _store_instance(self, event: evt.Event, calling_ae: str) -> int:
        free = self._store.free_bytes()
        if free < self._settings.min_free_disk_bytes:
            raise StoreRefusedError(OUT_OF_RESOURCES, f"store disk nearly full ({free} bytes free)")
        encoded = event.encoded_dataset(include_meta=True)
        if len(encoded) > self._settings.max_instance_bytes:
            raise StoreRefusedError(
                OUT_OF_RESOURCES,
                f"instance of {len(encoded)} bytes exceeds max_instance_bytes "
                f"({self._settings.max_instance_bytes})",
            )
        try:
            # pydicom converts an element's value when it is first read: everything the
            # handler uses is read here, so a value that cannot be decoded (an unknown VR,
            # a wrong length) is the peer's "cannot understand", never the node's failure.
            header = dcmread(BytesIO(encoded))
            rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
            values = {keyword: header.get(keyword) for keyword in _HEADER_KEYWORDS}
        except Exception as error:
            raise StoreRefusedError(
                CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(error).__name__})"
            ) from None
        try:
            return self._store_decoded(event, calling_ae, encoded, header, values, (rows, columns))
        except StoreRefusedError as refused:
            # Refused after the header was read: the study's story shows the refusal.
            refused.study_instance_uid = _loggable_uid(values["StudyInstanceUID"])
            raise

    def _store_decoded(
        self,
        event: evt.Event,
        calling_ae: str,
        encoded: bytes,
        header: Dataset,
        values: dict[str, Any],
        size: tuple[int, int],
    ) -> int:
        rows, columns = size
        if rows * columns > self._settings.max_image_pixels:
            raise StoreRefusedError(
                OUT_OF_RESOURCES,
                f"image of {rows} x {columns} pixels exceeds max_image_pixels "
                f"({self._settings.max_image_pixels})",
            )
        try:
            pixel_problem = pixel_data_problem(header)
        except Exception as error:
            pixel_problem = f"pixel data cannot be decoded ({type(error).__name__})"
        if pixel_problem:
            raise StoreRefusedError(CANNOT_UNDERSTAND, pixel_problem)
        uids = InstanceUids.checked(values, event.request)
        stored = self._store.write(encoded, uids.study, uids.series, uids.sop_instance)
        self._record(event, calling_ae, uids, stored, _short_string(values["Modality"]))
        return SUCCESS

    def _record(
        self,
        event: evt.Event,
        calling_ae: str,
        uids: InstanceUids,
        stored: StoredFile,
        modality: str | None,
    ) -> None:
        """The instance's row and its audit event, in one transaction."""
        received = uids.received(
            stored,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            modality=modality,
            calling_ae_title=calling_ae,
            urgent=self._settings.priority.is_urgent(calling_ae, modality),
        )
        with self._sessions.begin() as session:
            outcome = StudyRepository(session).record_instance(received)
            AuditLog(session).record(
                _AUDIT_FOR_OUTCOME[outcome],
                actor=calling_ae,
                study_instance_uid=uids.study,
                sop_instance_uid=uids.sop_instance,
                sop_class_uid=uids.sop_class,
                size_bytes=stored.size_bytes,
            )
        logger.debug("%s SOP Instance %s of study %s", outcome, uids.sop_instance, uids.study)

    def _audit_refusal(
        self,
        calling_ae: str,
        sop_uid: str,
        reason: str,
        status: int,
        study_uid: str | None = None,
    ) -> None:
        logger.warning(
            "refused SOP Instance %s from %s: %s", _loggable_uid(sop_uid), calling_ae, reason
        )
        try:
            with self._sessions.begin() as session:
                AuditLog(session).record(
                    AuditEventType.INSTANCE_REFUSED,
                    Outcome.FAILURE,
                    actor=calling_ae,
                    study_instance_uid=study_uid,
                    sop_instance_uid=_loggable_uid(sop_uid),
                    reason=reason,
                    status=f"0x{status:04X}",
                )
        except Exception:
            logger.exception("could not audit a refused instance")


@dataclass(frozen=True)
class InstanceUids:
    """The four UIDs that name an instance's file and row."""

    sop_instance: str
    sop_class: str
    study: str
    series: str

    @classmethod
    def of(cls, header: Dataset) -> InstanceUids:
        """A trusted header's UIDs, unchecked (instances the node writes itself)."""
        return cls(
            str(header.SOPInstanceUID),
            str(header.SOPClassUID),
            str(header.StudyInstanceUID),
            str(header.SeriesInstanceUID),
        )

    def received(
        self,
        stored: StoredFile,
        *,
        transfer_syntax_uid: str,
        modality: str | None,
        calling_ae_title: str,
        urgent: bool,
    ) -> ReceivedInstance:
        """The row of this instance, stored as ``stored``: triageable by its SOP class."""
        return ReceivedInstance(
            study_instance_uid=self.study,
            series_instance_uid=self.series,
            sop_instance_uid=self.sop_instance,
            sop_class_uid=self.sop_class,
            transfer_syntax_uid=transfer_syntax_uid,
            modality=modality,
            triageable=self.sop_class in TRIAGEABLE_SOP_CLASSES,
            path=stored.relative_path,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            calling_ae_title=calling_ae_title,
            urgent=urgent,
        )

    @classmethod
    def checked(cls, values: dict[str, Any], request: Any) -> InstanceUids:
        """The data set's UIDs, valid and matching the C-STORE request, or refused
        (0xA900: they name the files and rows, so nothing else will do)."""
        try:
            uids = cls(
                validate_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
                validate_uid(values["SOPClassUID"], "SOPClassUID"),
                validate_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
                validate_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
            )
        except InvalidUIDError as error:
            raise StoreRefusedError(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(error)) from None
        if uids.sop_instance != request.AffectedSOPInstanceUID:
            raise StoreRefusedError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPInstanceUID differs from the C-STORE request's Affected SOP Instance UID",
            )
        if uids.sop_class != request.AffectedSOPClassUID:
            raise StoreRefusedError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID differs from the C-STORE request's Affected SOP Class UID",
            )
        return uids


def pixel_data_problem(dataset: Dataset) -> str | None:
    """Why the Pixel Data cannot be what the header declares, or None if it can.

    A dataset cut short in its last element still parses; only comparing the
    pixel data with Rows, Columns and the bit depth shows that it is truncated.
    """
    if "PixelData" not in dataset:
        return None
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        fragments = sum(1 for _ in generate_fragments(dataset.PixelData))
        return None if fragments else "encapsulated pixel data holds no fragment"
    expected_bits = (
        int(dataset.Rows)
        * int(dataset.Columns)
        * int(dataset.get("SamplesPerPixel", 1))
        * int(dataset.get("NumberOfFrames", 1) or 1)
        * int(dataset.BitsAllocated)
    )
    actual = len(dataset.PixelData)
    if actual * 8 < expected_bits:
        return f"pixel data has {actual} bytes, the header declares {(expected_bits + 7) // 8}"
    return None


#: The header values the store handler reads (besides Rows, Columns and Pixel Data).
_HEADER_KEYWORDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
)

_AUDIT_FOR_OUTCOME = {
    RecordOutcome.STORED: AuditEventType.INSTANCE_STORED,
    RecordOutcome.DUPLICATE: AuditEventType.INSTANCE_DUPLICATE,
    RecordOutcome.REPLACED: AuditEventType.INSTANCE_REPLACED,
}


def _loggable_uid(value: Any) -> str | None:
    try:
        return validate_uid(value, "UID")
    except InvalidUIDError:
        return None


def _short_string(value: Any) -> str | None:
    return str(value)[:16] if value else None


def serve_handed_connections(
    values: dict[str, Any],
    index: int,
    ready: ProcessEvent,
    channel: socket.socket,
    probes: SharedCounter | None = None,
) -> None:
    """A receiver process (dicom_node.receive.receivers): one more StorageSCP serving the
    connections handed on ``channel``, until SIGTERM; ``probes``: its node's count."""
    stop = become_receiver_process(index)
    if probes is not None:
        probes.use_slot(index)
    settings = Settings.model_construct(**values)
    configure_logging(settings)  # the node's format and levels
    engine = engine_from_settings(settings)
    scp = StorageSCP(
        settings,
        make_session_factory(engine),
        InstanceStore(settings.store_dir),
        handed_connections=channel,
        probes=probes,
    )
    try:
        scp.start()
        ready.set()
        stop.wait()
    finally:
        scp.stop()
        engine.dispose()
