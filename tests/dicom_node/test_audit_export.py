"""The ATNA export: DICOM audit messages in RFC 5424 syslog over TCP, to a loopback collector."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from config.settings import AuditSyslogSettings, Settings, TlsSettings
from db.audit import AuditEventType, AuditLog, Outcome
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import AuditEvent
from dicom_node.atna.export import AuditExportWorker, SyslogAuditExporter
from dicom_node.tls import server_context
from tests.peers import free_port
from tests.pki import Pki, make_pki

STUDY = "1.2.826.0.1.3680043.8.498.7"
HEADER = re.compile(
    r"^<85>1 (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) fracture-triage "
    r"(?P<procid>\d+) IHE\+RFC-3881 - \ufeff(?P<xml><AuditMessage>.*</AuditMessage>)$",
    re.DOTALL,
)


class Collector:
    """A syslog collector on loopback: TCP, octet-counting framing; TLS (RFC 5425) when
    given a server context, recording each client's certificate subject."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[str] = []
        self.client_subjects: list[str] = []
        self.handshake_failures: list[str] = []
        self._tls = tls
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            if self._tls is not None:
                try:
                    connection = self._wrap(connection)
                except (ssl.SSLError, OSError) as error:
                    self.handshake_failures.append(type(error).__name__)
                    continue
            with connection:
                buffer = b""
                while chunk := connection.recv(65536):
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        if len(rest) < int(length):
                            break
                        self.messages.append(rest[: int(length)].decode("utf-8"))
                        buffer = rest[int(length) :]

    def _wrap(self, connection: socket.socket) -> ssl.SSLSocket:
        assert self._tls is not None
        connection.settimeout(10)
        try:
            wrapped = self._tls.wrap_socket(connection, server_side=True)
        except BaseException:
            connection.close()
            raise
        wrapped.settimeout(None)
        certificate = wrapped.getpeercert() or {}
        subject = dict(pair for rdn in certificate.get("subject", ()) for pair in rdn)
        self.client_subjects.append(str(subject.get("commonName", "")))
        return wrapped

    def wait_for(self, count: int, timeout: float = 10) -> list[str]:
        for _ in range(int(timeout / 0.05)):
            if len(self.messages) >= count:
                break
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.close()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def record_story(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        audit = AuditLog(session)
        audit.record(
            AuditEventType.ASSOCIATION_ACCEPTED, actor="MODALITY", address="127.0.0.1", port=4242
        )
        audit.record(
            AuditEventType.INSTANCE_STORED,
            actor="MODALITY",
            study_instance_uid=STUDY,
            sop_instance_uid=f"{STUDY}.1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        )
        audit.record(
            AuditEventType.TRIAGE_FAILED,
            Outcome.FAILURE,
            actor="triage",
            study_instance_uid=STUDY,
            reason="RuntimeError: <boom> & more",
        )


def exporter_for(sessions: sessionmaker[Session], port: int) -> SyslogAuditExporter:
    settings = AuditSyslogSettings(host="127.0.0.1", port=port)
    return SyslogAuditExporter(settings, sessions, ae_title="FRACTURE_TRIAGE")


def parse(message: str) -> ET.Element:
    match = HEADER.match(message)
    assert match, message[:200]
    return ET.fromstring(match.group("xml"))


def test_events_arrive_as_dicom_audit_messages(
    sessions: sessionmaker[Session], collector: Collector
) -> None:
    record_story(sessions)
    exporter = exporter_for(sessions, collector.port)
    assert exporter.export_pending() == 3
    messages = collector.wait_for(3)
    assert len(messages) == 3
    association, stored, failed = (parse(m) for m in messages)

    assert association.find("EventIdentification/EventID").get("csd-code") == "110114"
    assert association.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    peers = association.findall("ActiveParticipant")
    assert [p.get("UserID") for p in peers] == ["FRACTURE_TRIAGE", "MODALITY"]
    assert peers[1].get("NetworkAccessPointID") == "127.0.0.1"

    identification = stored.find("EventIdentification")
    assert identification.find("EventID").get("csd-code") == "110104"
    assert identification.get("EventActionCode") == "C"
    study = stored.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("ParticipantObjectDescription/SOPClass/Instance").get("UID") == f"{STUDY}.1.1"
    with sessions() as session:
        hashes = [e.event_hash for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    details = {
        d.get("type"): base64.b64decode(d.get("value")).decode()
        for d in study.findall("ParticipantObjectDetail")
    }
    assert details["fracture-triage event_hash"] == hashes[1]

    assert failed.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert (
        failed.find("EventIdentification/EventOutcomeDescription").text
        == "RuntimeError: <boom> & more"
    )
    assert exporter.export_pending() == 0  # the cursor remembers


def test_collector_outage_loses_nothing(sessions: sessionmaker[Session]) -> None:
    record_story(sessions)
    port = free_port()  # nobody listens yet
    exporter = exporter_for(sessions, port)
    with pytest.raises(OSError):
        exporter.export_pending()
    collector = Collector(port)
    try:
        assert exporter.export_pending() == 3
        assert len(collector.wait_for(3)) == 3
    finally:
        collector.close()


def test_worker_exports_as_events_happen(
    sessions: sessionmaker[Session], collector: Collector
) -> None:
    worker = AuditExportWorker(exporter_for(sessions, collector.port), interval=0.1)
    worker.start()
    try:
        record_story(sessions)
        assert len(collector.wait_for(3)) == 3
        with sessions.begin() as session:
            AuditLog(session).record(AuditEventType.STUDY_READY, study_instance_uid=STUDY)
        assert len(collector.wait_for(4)) == 4
    finally:
        worker.stop()
    assert len(collector.messages) == 4


def test_export_is_off_by_default_and_switched_on_in_settings() -> None:
    assert Settings().audit_syslog is None
    settings = Settings(audit_syslog={"host": "ar.example.org", "port": 6514, "tls": True})
    assert settings.audit_syslog == AuditSyslogSettings(host="ar.example.org", tls=True)


# -- syslog over TLS (RFC 5425) --------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_collector(pki: Pki) -> Iterator[Collector]:
    """The collector with the test server certificate, requiring a client certificate."""
    context = server_context(
        TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca)
    )
    collector = Collector(tls=context)
    yield collector
    collector.close()


def tls_exporter(
    sessions: sessionmaker[Session], port: int, pki: Pki, ca_file: Path
) -> SyslogAuditExporter:
    """The exporter as the node runs it with ``audit_syslog.tls``: the node's [tls]
    certificate as client certificate, the collector verified against ``ca_file``."""
    settings = AuditSyslogSettings(host="127.0.0.1", port=port, tls=True)
    identity = TlsSettings(cert_file=pki.client_cert, key_file=pki.client_key, ca_file=ca_file)
    return SyslogAuditExporter(settings, sessions, ae_title="FRACTURE_TRIAGE", tls=identity)


def test_events_arrive_over_tls_with_mutual_authentication(
    sessions: sessionmaker[Session], tls_collector: Collector, pki: Pki
) -> None:
    record_story(sessions)
    exporter = tls_exporter(sessions, tls_collector.port, pki, pki.ca)
    assert exporter.export_pending() == 3
    messages = tls_collector.wait_for(3)
    assert [parse(m).find("EventIdentification/EventID").get("csd-code") for m in messages] == [
        "110114",
        "110104",
        "110103",
    ]
    assert tls_collector.client_subjects == ["test PACS"]  # the collector saw our certificate
    assert exporter.export_pending() == 0


def test_collector_with_an_untrusted_certificate_gets_nothing(
    sessions: sessionmaker[Session], tls_collector: Collector, pki: Pki
) -> None:
    """The node trusts another CA: the handshake fails, nothing is sent, the cursor stays
    put, and once the node trusts the right CA the same events go out."""
    record_story(sessions)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_exporter(sessions, tls_collector.port, pki, pki.other_ca).export_pending()
    assert tls_collector.messages == []
    assert tls_exporter(sessions, tls_collector.port, pki, pki.ca).export_pending() == 3
    assert len(tls_collector.wait_for(3)) == 3


def test_plain_tcp_to_a_tls_collector_delivers_nothing(
    sessions: sessionmaker[Session], tls_collector: Collector
) -> None:
    """A site that forgot ``tls = true``: the collector refuses the cleartext stream."""
    record_story(sessions)
    with contextlib.suppress(ConnectionError):  # the collector may reset us mid-send
        exporter_for(sessions, tls_collector.port).export_pending()
    deadline = time.monotonic() + 10
    while not tls_collector.handshake_failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tls_collector.handshake_failures
    assert tls_collector.messages == []
