"""Export of the audit trail to the hospital's audit repository (IHE ATNA).

Each ``audit_events`` row becomes a DICOM audit message (PS3.15 A.5, the ATNA
XML schema) in an RFC 5424 syslog message, sent over TCP with octet-counting
framing (RFC 6587 section 3.4.1, the framing RFC 5425 uses over TLS). A cursor
row (``audit_export_cursors``) remembers the last event sent, so the export
resumes after a restart or an outage of the collector: delivery is at least
once, in chain order. Each message carries the event's chain hash, so the
repository's copy can later prove what the local trail held.

No patient data leaves here: events hold UIDs, AE titles, addresses and reasons,
never names or IDs.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import AuditSyslogSettings, Settings, TlsSettings
from db.audit import canonical_timestamp
from db.models import AuditEvent, AuditExportCursor
from dicom_node.periodic import PeriodicWorker
from dicom_node.tls import client_context

logger = logging.getLogger(__name__)

CURSOR_NAME = "syslog"
#: RFC 5424 PRI: facility 10 (security/authorization, "authpriv"), severity 5 (notice).
SYSLOG_PRI = 10 * 8 + 5
#: IHE ITI TF-2a 3.20.6: the MSGID of an audit message.
SYSLOG_MSGID = "IHE+RFC-3881"


@dataclass(frozen=True)
class _Code:
    code: str
    meaning: str
    scheme: str = "DCM"


# PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code), CID 402 (Role ID).
APPLICATION_ACTIVITY = _Code("110100", "Application Activity")
INSTANCES_ACCESSED = _Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = _Code("110105", "DICOM Study Deleted")
USER_AUTHENTICATION = _Code("110114", "User Authentication")
LOGIN = _Code("110122", "Login")
NODE_AUTHENTICATION = _Code("110126", "Node Authentication")
SECURITY_ALERT = _Code("110113", "Security Alert")
APPLICATION_ROLE = _Code("110150", "Application")
DESTINATION_ROLE = _Code("110152", "Destination Role ID")
SOURCE_ROLE = _Code("110153", "Source Role ID")
STUDY_UID_TYPE = _Code("110180", "Study Instance UID")
NODE_ID_TYPE = _Code("110182", "Node ID")

#: event_type -> (EventID, EventTypeCode, EventActionCode, the node is the receiver).
_EVENTS: dict[str, tuple[_Code, _Code | None, str, bool | None]] = {
    "association_accepted": (USER_AUTHENTICATION, LOGIN, "E", True),
    "association_rejected": (SECURITY_ALERT, NODE_AUTHENTICATION, "E", True),
    "instance_stored": (INSTANCES_TRANSFERRED, None, "C", True),
    "instance_duplicate": (INSTANCES_TRANSFERRED, None, "R", True),
    "instance_replaced": (INSTANCES_TRANSFERRED, None, "U", True),
    "instance_refused": (INSTANCES_TRANSFERRED, None, "C", True),
    "study_ready": (INSTANCES_ACCESSED, None, "R", None),
    "triage_started": (INSTANCES_ACCESSED, None, "E", None),
    "triage_finished": (INSTANCES_ACCESSED, None, "E", None),
    "triage_skipped": (INSTANCES_ACCESSED, None, "E", None),
    "triage_failed": (INSTANCES_ACCESSED, None, "E", None),
    "output_created": (INSTANCES_ACCESSED, None, "C", None),
    "output_sent": (INSTANCES_TRANSFERRED, None, "R", False),
    "output_send_failed": (INSTANCES_TRANSFERRED, None, "R", False),
    "reprocess_requested": (INSTANCES_ACCESSED, None, "E", None),
    "purge": (STUDY_DELETED, None, "D", None),
}
_DEFAULT_EVENT = (APPLICATION_ACTIVITY, None, "E", None)


#: Characters XML 1.0 cannot carry at all (not even escaped): C0 controls but tab, LF, CR;
#: surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object) -> str:
    """``value`` as text an XML 1.0 document can hold: characters it cannot are replaced
    by U+FFFD, so a peer's AE title or an exception message never breaks the message."""
    return _NOT_XML.sub("\ufffd", str(value))


def _element(parent: ET.Element, tag: str, attributes: dict[str, str] | None = None) -> ET.Element:
    return ET.SubElement(parent, tag, {k: xml_text(v) for k, v in (attributes or {}).items()})


def _coded(parent: ET.Element, tag: str, code: _Code) -> ET.Element:
    return _element(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def audit_message(event: AuditEvent, *, ae_title: str, host: str) -> str:
    """The DICOM audit message (PS3.15 A.5.1) for one audit event, as XML text.

    Valid against the standard's schema (``dicom_node/schemas/audit-message.rnc``);
    text from outside (AE titles, reasons) passes through :func:`xml_text`. The parts
    come in the schema's order: event, participants, source, participant object.
    """
    mapping = _EVENTS.get(event.event_type, _DEFAULT_EVENT)
    root = ET.Element("AuditMessage")
    _event_identification(root, event, mapping)
    _participants(root, event, mapping[3], ae_title=ae_title, host=host)
    source = _element(root, "AuditSourceIdentification", {"AuditSourceID": ae_title})
    _element(
        source,
        "AuditSourceTypeCode",
        {"csd-code": "4", "codeSystemName": "DCM", "originalText": "Application Server"},
    )
    if event.study_instance_uid:
        _study_object(root, event)
    else:
        _node_object(root, event, ae_title)
    return ET.tostring(root, encoding="unicode")


def _event_identification(
    root: ET.Element, event: AuditEvent, mapping: tuple[_Code, _Code | None, str, bool | None]
) -> None:
    event_id, type_code, action, _ = mapping
    identification = _element(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": canonical_timestamp(event.occurred_at),
            "EventOutcomeIndicator": "0" if event.outcome == "success" else "4",
        },
    )
    _coded(identification, "EventID", event_id)
    if type_code is not None:
        _coded(identification, "EventTypeCode", type_code)
    reason = (event.detail or {}).get("reason")
    if event.outcome != "success" and reason:
        _element(identification, "EventOutcomeDescription").text = xml_text(reason)


def _participants(
    root: ET.Element, event: AuditEvent, node_receives: bool | None, *, ae_title: str, host: str
) -> None:
    """The node itself, then the peer or component that acted (calling AE, destination...)."""
    node = _element(
        root,
        "ActiveParticipant",
        {
            "UserID": ae_title,
            "AlternativeUserID": str(os.getpid()),
            "UserIsRequestor": "false" if node_receives else "true",
            "NetworkAccessPointID": host,
            "NetworkAccessPointTypeCode": "1",
        },
    )
    if node_receives is None:
        _coded(node, "RoleIDCode", APPLICATION_ROLE)
    else:
        _coded(node, "RoleIDCode", DESTINATION_ROLE if node_receives else SOURCE_ROLE)
    if not event.actor:
        return
    attributes = {"UserID": event.actor, "UserIsRequestor": "true" if node_receives else "false"}
    address = (event.detail or {}).get("address")
    if address:
        attributes["NetworkAccessPointID"] = str(address)
        attributes["NetworkAccessPointTypeCode"] = "2"
    peer = _element(root, "ActiveParticipant", attributes)
    if node_receives is not None:
        _coded(peer, "RoleIDCode", SOURCE_ROLE if node_receives else DESTINATION_ROLE)


def _study_object(root: ET.Element, event: AuditEvent) -> None:
    """The study as the participant object: ID type code, a name (its UID, never patient
    data), the details, then the DICOM description (the SOP class) in the schema's order."""
    assert event.study_instance_uid is not None
    study = _element(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": event.study_instance_uid,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        },
    )
    _coded(study, "ParticipantObjectIDTypeCode", STUDY_UID_TYPE)
    _element(study, "ParticipantObjectName").text = xml_text(event.study_instance_uid)
    _chain_details(study, event)
    if event.sop_instance_uid:
        description = _element(study, "ParticipantObjectDescription")
        sop_class = _element(description, "SOPClass", {"NumberOfInstances": "1"})
        sop_class_uid = (event.detail or {}).get("sop_class_uid")
        if sop_class_uid:
            sop_class.set("UID", xml_text(sop_class_uid))
        _element(sop_class, "Instance", {"UID": event.sop_instance_uid})


def _node_object(root: ET.Element, event: AuditEvent, ae_title: str) -> None:
    """No study (an association, a refused instance): the node is the object."""
    node_object = _element(
        root,
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": ae_title, "ParticipantObjectTypeCode": "2"},
    )
    _coded(node_object, "ParticipantObjectIDTypeCode", NODE_ID_TYPE)
    _element(node_object, "ParticipantObjectName").text = xml_text(ae_title)
    _chain_details(node_object, event)
    if event.sop_instance_uid:
        _detail(node_object, "SOP Instance UID", event.sop_instance_uid)


def _chain_details(parent: ET.Element, event: AuditEvent) -> None:
    """The event's id, type and chain hash: the repository's copy anchors the local chain."""
    _detail(parent, "fracture-triage event", f"{event.id} {event.event_type}")
    _detail(parent, "fracture-triage event_hash", event.event_hash)


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
    _element(parent, "ParticipantObjectDetail", {"type": kind, "value": encoded})


def syslog_frame(
    event: AuditEvent, message: str, *, host: str, app_name: str, procid: str | None = None
) -> bytes:
    """One RFC 5424 message, octet-counted.

    ``LEN SP <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML``
    """
    header = " ".join(
        (
            f"<{SYSLOG_PRI}>1",
            canonical_timestamp(event.occurred_at),
            _printable(host, 255),
            _printable(app_name, 48),
            _printable(procid or str(os.getpid()), 128),
            SYSLOG_MSGID,
            "-",
        )
    )
    payload = header.encode("ascii") + b" \xef\xbb\xbf" + message.encode("utf-8")
    return str(len(payload)).encode("ascii") + b" " + payload


def _printable(value: str, limit: int) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


class SyslogAuditExporter:
    """Sends the audit events not sent yet, in id order, and moves the cursor."""

    def __init__(
        self,
        settings: AuditSyslogSettings,
        sessions: sessionmaker[Session],
        *,
        ae_title: str,
        tls: TlsSettings | None = None,
        batch_size: int = 500,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._ae_title = ae_title
        self._tls = tls
        self._batch_size = batch_size
        self._host = socket.gethostname() or "localhost"

    def export_pending(self) -> int:
        """Send every pending event; return how many.

        A connection error propagates; the cursor then stays before the batch that
        failed, which is sent again, whole, next time (at least once).
        """
        total = 0
        while True:
            events = self._pending()
            if not events:
                return total
            self._send(events)
            self._advance(events[-1].id)
            total += len(events)

    def _pending(self) -> Sequence[AuditEvent]:
        with self._sessions() as session:
            cursor = session.get(AuditExportCursor, CURSOR_NAME)
            after = cursor.last_event_id if cursor else 0
            return list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.id > after)
                    .order_by(AuditEvent.id)
                    .limit(self._batch_size)
                )
            )

    def _advance(self, last_event_id: int) -> None:
        with self._sessions.begin() as session:
            cursor = session.get(AuditExportCursor, CURSOR_NAME)
            if cursor is None:
                session.add(AuditExportCursor(name=CURSOR_NAME, last_event_id=last_event_id))
            elif last_event_id > cursor.last_event_id:
                cursor.last_event_id = last_event_id

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._settings.host, self._settings.port), timeout=30)
        if not self._settings.tls:
            return sock
        context: ssl.SSLContext = client_context(self._tls)
        return context.wrap_socket(sock, server_hostname=self._settings.host)

    def _send(self, events: Sequence[AuditEvent]) -> None:
        with self._connect() as sock:
            for event in events:
                message = audit_message(event, ae_title=self._ae_title, host=self._host)
                sock.sendall(
                    syslog_frame(event, message, host=self._host, app_name=self._settings.app_name)
                )
            _close_gracefully(sock)


def _close_gracefully(sock: socket.socket) -> None:
    """End the connection so the collector reads every byte sent before it ends.

    Closing a socket that still holds unread data (over TLS 1.3: the collector's
    session tickets, which syslog never reads) sends RST, and a RST can make the
    collector's kernel drop the last messages it had not read yet. So: TLS
    close_notify, half-close, and read until the collector closes its side. A
    collector that misbehaves here has had everything sent; the errors are ignored.
    """
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify; the plain socket is returned
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except OSError:
        pass


class AuditExportWorker(PeriodicWorker):
    """Runs :meth:`SyslogAuditExporter.export_pending` every ``interval`` seconds."""

    def __init__(self, exporter: SyslogAuditExporter, interval: float) -> None:
        super().__init__("audit-export", interval)
        self._exporter = exporter

    def run_once(self) -> None:
        try:
            self._exporter.export_pending()
        except OSError as error:
            logger.warning("audit syslog collector unreachable (%s); retrying", error)

    def stop(self) -> None:
        super().stop()
        try:
            self._exporter.export_pending()  # what the last moments recorded
        except Exception as error:
            logger.warning("audit export at stop failed (%s); sent at the next start", error)


def export_worker(settings: Settings, sessions: sessionmaker[Session]) -> AuditExportWorker | None:
    """The node's export worker, or None when ``audit_syslog`` is not configured."""
    if settings.audit_syslog is None:
        return None
    exporter = SyslogAuditExporter(
        settings.audit_syslog, sessions, ae_title=settings.ae_title, tls=settings.tls
    )
    return AuditExportWorker(exporter, settings.audit_syslog.poll_seconds)
