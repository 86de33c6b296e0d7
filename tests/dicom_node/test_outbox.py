"""The durable outbox against real peers: an absent PACS, then dcmtk's storescp."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy.orm import Session, sessionmaker

from config import Destination, DicomWebDestination, Settings, load_settings
from config.domain.findings import AlgorithmIdentity, StudyFinding
from config.domain.vocabulary import OutputKind
from config.settings import Hl7Destination
from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Delivery, DeliveryStatus
from db.repositories import ReceivedInstance, RunRepository, StudyRepository, WrittenOutput
from dicom_node.delivery.outbox import Backoff, Outbox, OutboxPass
from dicom_node.hl7.oru import build_oru_r01
from tests.dicom_node.conftest import DX_FOR_PRESENTATION, make_dx
from tests.hl7_listener import run_mllp_listener
from tests.peers import free_port, require_binary, run_orthanc, wait_for_port

STUDY = "1.2.826.0.1.3680043.10.2.1"


@pytest.fixture
def pacs_port() -> int:
    return free_port()


@pytest.fixture
def settings(tmp_path: Path, pacs_port: int) -> Settings:
    return load_settings(
        None,
        store_dir=tmp_path / "store",
        output_dir=tmp_path / "outputs",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
        destinations=(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs_port),),
        outbox_retry_base_seconds=0.2,
        outbox_retry_cap_seconds=1.0,
    )


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def queue_output(settings: Settings, sessions: sessionmaker[Session], index: int = 1) -> str:
    """One produced object on disk and its delivery row, as a triage run leaves them."""
    sop_uid = f"{STUDY}.9.{index}"
    ds = make_dx(
        study_instance_uid=STUDY, series_instance_uid=f"{STUDY}.9", sop_instance_uid=sop_uid
    )
    relative = f"{STUDY}/{STUDY}.9/{sop_uid}.dcm"
    (settings.output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(settings.output_dir / relative, enforce_file_format=True)
    record_output(sessions, OutputKind.ANNOTATED, ds.SOPClassUID, sop_uid, f"{STUDY}.9", relative)
    return sop_uid


def record_output(
    sessions: sessionmaker[Session],
    kind: OutputKind,
    sop_class_uid: str,
    sop_uid: str,
    series_uid: str,
    relative: str,
) -> None:
    """The study, a run and its output with a delivery to "pacs", as triage leaves them."""
    with sessions.begin() as session:
        if StudyRepository(session).get(STUDY) is None:
            StudyRepository(session).record_instance(
                ReceivedInstance(
                    STUDY,
                    f"{STUDY}.1",
                    f"{STUDY}.1.1",
                    DX_FOR_PRESENTATION,
                    "1.2.840.10008.1.2.1",
                    "DX",
                    True,
                    "x",
                    1,
                    "0" * 64,
                    None,
                )
            )
        runs = RunRepository(session)
        runs.add_output(
            runs.start(STUDY, model_name="m", model_version="1"),
            WrittenOutput(
                kind=kind,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_uid,
                series_instance_uid=series_uid,
                path=relative,
                destinations=("pacs",),
            ),
        )


def deliveries(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.query(Delivery).order_by(Delivery.id))


@contextlib.contextmanager
def storescp_pacs(received: Path, port: int) -> Iterator[None]:
    """dcmtk's storescp as the PACS on ``port``, writing what it receives to ``received``."""
    storescp = require_binary("storescp", "dcmtk")
    received.mkdir()
    pacs = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(received), "--fork", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base_seconds=2, cap_seconds=30)
    assert [backoff.delay(n).total_seconds() for n in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_seconds=5, cap_seconds=1)


def test_absent_pacs_is_retried_with_backoff_then_gets_each_object_once(
    settings: Settings, sessions: sessionmaker[Session], pacs_port: int, tmp_path: Path
) -> None:
    require_binary("storescp", "dcmtk")  # the PACS below: skip before any work without it
    sop_uid = queue_output(settings, sessions)
    outbox = Outbox(settings, sessions)

    # The PACS is down: the delivery stays pending, with a backoff, and is audited.
    assert outbox.send_due().retrying == 1
    (delivery,) = deliveries(sessions)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 1
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at > dt.datetime.now(dt.UTC)
    assert outbox.send_due().retrying == 0  # not due yet: nothing is attempted

    received = tmp_path / "pacs"
    with storescp_pacs(received, pacs_port):
        time.sleep(settings.outbox_retry_base_seconds * 2)
        assert outbox.send_due().sent == 1
        assert outbox.send_due() == OutboxPass()  # nothing left to send

    (delivery,) = deliveries(sessions)
    assert delivery.status is DeliveryStatus.SENT and delivery.attempts == 2
    files = list(received.iterdir())
    assert len(files) == 1 and sop_uid in files[0].name  # same SOP Instance UID, exactly once
    with sessions() as session:
        audit = AuditLog(session)
        assert len(audit.of_type(AuditEventType.OUTPUT_SEND_FAILED)) == 1
        assert len(audit.of_type(AuditEventType.OUTPUT_SENT)) == 1


def test_refused_sop_class_fails_for_good(
    settings: Settings, sessions: sessionmaker[Session], pacs_port: int
) -> None:
    queue_output(settings, sessions)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)  # a PACS that takes CT only: DX is refused
    server = ae.start_server(("127.0.0.1", pacs_port), block=False)
    try:
        result = Outbox(settings, sessions).send_due()
    finally:
        server.shutdown()
    assert (result.failed, result.retrying) == (1, 0)
    (delivery,) = deliveries(sessions)
    assert delivery.status is DeliveryStatus.FAILED
    assert "refused" in (delivery.last_error or "")
    with sessions() as session:
        (event,) = AuditLog(session).of_type(AuditEventType.OUTPUT_SEND_FAILED)
        assert event.detail["permanent"] is True


def test_dicomweb_destination_gets_the_object_by_stow_rs(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with run_orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        stow = settings.model_copy(
            update={
                "destinations": (
                    DicomWebDestination(
                        kind="dicomweb", name="pacs", url=f"{orthanc.url}/dicom-web"
                    ),
                )
            }
        )
        sop_uid = queue_output(stow, sessions)
        assert Outbox(stow, sessions).send_due() == OutboxPass(sent=1)
        found = orthanc.request("POST", "/tools/lookup", sop_uid.encode())
        assert [item["Type"] for item in found] == ["Instance"]
    (delivery,) = deliveries(sessions)
    assert delivery.status is DeliveryStatus.SENT


def test_dicomweb_server_down_is_retried(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    down = settings.model_copy(
        update={
            "destinations": (
                DicomWebDestination(
                    kind="dicomweb", name="pacs", url=f"http://127.0.0.1:{free_port()}/dicom-web"
                ),
            )
        }
    )
    queue_output(down, sessions)
    assert Outbox(down, sessions).send_due() == OutboxPass(retrying=1)


def test_two_senders_at_once_send_each_object_once(
    settings: Settings, sessions: sessionmaker[Session], pacs_port: int, tmp_path: Path
) -> None:
    """The node's outbox thread and a worker's send task look at the same rows at once.

    Two outboxes with their own engines stand for the two processes; each delivery is
    claimed in the database by one of them, so the PACS gets every object once.
    """
    require_binary("storescp", "dcmtk")  # the PACS below: skip before any work without it
    for index in range(1, 7):
        queue_output(settings, sessions, index)
    received = tmp_path / "pacs"
    other_engine = make_engine(settings.database_url)
    try:
        with storescp_pacs(received, pacs_port):
            outboxes = [
                Outbox(settings, sessions),
                Outbox(settings, make_session_factory(other_engine)),
            ]
            start = threading.Barrier(len(outboxes))
            passes: list[OutboxPass] = []

            def send(outbox: Outbox) -> None:
                start.wait()
                passes.append(outbox.send_due())

            threads = [threading.Thread(target=send, args=(o,)) for o in outboxes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
    finally:
        other_engine.dispose()
    assert sum(p.sent for p in passes) == 6 and not any(p.retrying or p.failed for p in passes)
    assert all(d.status is DeliveryStatus.SENT and d.attempts == 1 for d in deliveries(sessions))
    with sessions() as session:
        assert len(AuditLog(session).of_type(AuditEventType.OUTPUT_SENT)) == 6
    assert len(list(received.iterdir())) == 6


def test_worklist_flag_waits_in_the_outbox_until_the_ris_is_back(
    settings: Settings,
    sessions: sessionmaker[Session],
    pacs_port: int,
    dx_image: Dataset,
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    """The ORU^R01 for a RIS that is down is retried with backoff and delivered once."""
    ris = Hl7Destination(kind="hl7", name="pacs", host="127.0.0.1", port=pacs_port)
    settings = settings.model_copy(update={"destinations": (ris,)})
    relative = f"{STUDY}/hl7/2.25.1.hl7"
    (settings.output_dir / relative).parent.mkdir(parents=True)
    (settings.output_dir / relative).write_text(
        build_oru_r01(dx_image, positive_finding, algorithm, control_id="RETRY1")
    )
    record_output(sessions, "hl7", "", "2.25.1", "", relative)
    outbox = Outbox(settings, sessions)
    assert outbox.send_due().retrying == 1  # the RIS is down
    with run_mllp_listener(port=pacs_port) as listener:
        time.sleep(settings.outbox_retry_base_seconds * 2)
        assert outbox.send_due().sent == 1
        assert outbox.send_due() == OutboxPass()
        time.sleep(0.5)
        assert [str(hl7.parse(m).segment("MSH")[10]) for m in listener.messages] == ["RETRY1"]
    (delivery,) = deliveries(sessions)
    assert delivery.status is DeliveryStatus.SENT and delivery.attempts == 2
    with sessions() as session:
        audit = AuditLog(session)
        assert len(audit.of_type(AuditEventType.OUTPUT_SEND_FAILED)) == 1
        assert len(audit.of_type(AuditEventType.OUTPUT_SENT)) == 1
