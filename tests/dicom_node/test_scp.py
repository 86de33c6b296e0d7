"""The storage SCP against real dcmtk peers (storescu, echoscu) over loopback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import select

from config import Settings
from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Instance
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
)
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx
from tests.peers import require_binary


class RunningSCP:
    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.database_url)
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = InstanceStore(settings.store_dir)
        self.scp = StorageSCP(settings, self.sessions, self.store)
        self.host, self.port = self.scp.start()
        self.settings = settings

    def events(self, kind: AuditEventType) -> list:
        with self.sessions() as session:
            return AuditLog(session).of_type(kind)

    def stop(self) -> None:
        self.scp.stop()
        self.engine.dispose()


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[Callable[..., RunningSCP]]:
    started: list[RunningSCP] = []

    def start(**overrides: object) -> RunningSCP:
        from config import load_settings

        values: dict[str, object] = {
            "port": 0,
            "store_dir": tmp_path / "store",
            "database_url": f"sqlite:///{tmp_path / 'audit.db'}",
        }
        values.update(overrides)
        running = RunningSCP(load_settings(None, **values))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def write_study(directory: Path, count: int = 3) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ds = make_dx(
            study_instance_uid="1.2.826.0.1.3680043.10.1.1",
            series_instance_uid="1.2.826.0.1.3680043.10.1.1.1",
            sop_instance_uid=f"1.2.826.0.1.3680043.10.1.1.1.{index + 1}",
            seed=index,
        )
        path = directory / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _echoscu(echoscu: str, node: RunningSCP, calling_ae: str) -> subprocess.CompletedProcess[bytes]:
    """dcmtk's echoscu from ``calling_ae`` to the node."""
    command = [
        echoscu,
        "-aet",
        calling_ae,
        "-aec",
        node.settings.ae_title,
        "127.0.0.1",
        str(node.port),
    ]
    return subprocess.run(command, capture_output=True, timeout=30)


def test_echoscu_gets_success(start_scp: Callable[..., RunningSCP]) -> None:
    echoscu = require_binary("echoscu", "dcmtk")
    node = start_scp()
    result = subprocess.run(
        [echoscu, "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_instances_are_on_disk_and_in_the_db(
    start_scp: Callable[..., RunningSCP], tmp_path: Path
) -> None:
    storescu = require_binary("storescu", "dcmtk")
    node = start_scp()
    files = write_study(tmp_path / "send")
    result = subprocess.run(
        [storescu, "-aet", "MODALITY", "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)]
        + [str(f) for f in files],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    with node.sessions() as session:
        instances = list(session.scalars(select(Instance).order_by(Instance.id)))
    assert [i.sop_instance_uid for i in instances] == [
        dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
    ]
    for instance, original in zip(instances, files, strict=True):
        stored = node.store.absolute(instance.path)
        assert stored.is_file()
        assert stored.stat().st_mode & 0o077 == 0  # owner-only
        assert dcmread(stored).PixelData == dcmread(original).PixelData
        assert instance.triageable and instance.calling_ae_title == "MODALITY"
    assert len(node.events(AuditEventType.INSTANCE_STORED)) == len(files)
    assert len(node.events(AuditEventType.ASSOCIATION_ACCEPTED)) == 1

    # The same instances again: stored once, audited as duplicates.
    subprocess.run(
        [storescu, "-aec", node.settings.ae_title, "127.0.0.1", str(node.port), str(files[0])],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with node.sessions() as session:
        assert len(list(session.scalars(select(Instance)))) == len(files)
    assert len(node.events(AuditEventType.INSTANCE_DUPLICATE)) == 1


def test_large_instance_in_many_pdus_is_stored_byte_for_byte(
    start_scp: Callable[..., RunningSCP],
    tmp_path: Path,
) -> None:
    storescu = require_binary("storescu", "dcmtk")
    node = start_scp(max_pdu_bytes=16_384)  # ~250 PDUs for a 4 MB instance
    instance = make_dx(
        study_instance_uid="1.2.826.0.1.3680043.10.1.7",
        series_instance_uid="1.2.826.0.1.3680043.10.1.7.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.1.7.1.1",
        seed=7,
        rows=1_400,
        columns=1_400,
    )
    path = tmp_path / "large.dcm"
    instance.save_as(path, enforce_file_format=True)
    result = subprocess.run(
        [storescu, "-aec", node.settings.ae_title, "127.0.0.1", str(node.port), str(path)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with node.sessions() as session:
        (stored,) = session.scalars(select(Instance))
    on_disk = node.store.absolute(stored.path)
    assert dcmread(on_disk).PixelData == instance.PixelData
    assert stored.sha256 == hashlib.sha256(on_disk.read_bytes()).hexdigest()


def test_unknown_calling_ae_is_rejected_and_audited(start_scp: Callable[..., RunningSCP]) -> None:
    echoscu = require_binary("echoscu", "dcmtk")
    node = start_scp(allowed_calling_ae_titles=("KNOWN_PACS",))
    refused = subprocess.run(
        [echoscu, "-aet", "STRANGER", "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=30,
    )
    assert refused.returncode != 0
    deadline = time.monotonic() + 10  # the SCP audits after it has sent the reject
    while not node.events(AuditEventType.ASSOCIATION_REJECTED) and time.monotonic() < deadline:
        time.sleep(0.05)
    (event,) = node.events(AuditEventType.ASSOCIATION_REJECTED)
    assert event.actor == "STRANGER"
    allowed = _echoscu(echoscu, node, "KNOWN_PACS")
    assert allowed.returncode == 0


def _send(node: RunningSCP, ds: Dataset) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


def test_path_traversal_uid_is_refused_and_nothing_is_written(
    start_scp: Callable[..., RunningSCP],
) -> None:
    node = start_scp()
    ds = make_dx(
        study_instance_uid="../../../etc",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
    )
    assert _send(node, ds) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "StudyInstanceUID" in event.detail["reason"]
    assert not any(p.suffix == ".dcm" for p in node.store.root.rglob("*"))
    # The node still answers afterwards.
    assert (
        _send(
            node,
            make_dx(
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
                sop_instance_uid="1.2.3.4.6",
            ),
        )
        == 0
    )


def _echo_ok(node: RunningSCP) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def _send_file(node: RunningSCP, path: Path) -> int:
    """Send a file's bytes as they are: pynetdicom streams it without decoding."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(path).Status
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()


def _good_dx(index: int) -> Dataset:
    return make_dx(
        study_instance_uid="1.2.826.0.1.3680043.10.1.2",
        series_instance_uid="1.2.826.0.1.3680043.10.1.2.1",
        sop_instance_uid=f"1.2.826.0.1.3680043.10.1.2.1.{index}",
    )


def test_huge_declared_image_is_refused(start_scp: Callable[..., RunningSCP]) -> None:
    node = start_scp()
    ds = _good_dx(1)
    ds.Rows = ds.Columns = 65_535  # the most US allows; declared only, pixel data stays small
    assert _send(node, ds) == OUT_OF_RESOURCES
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "max_image_pixels" in event.detail["reason"]
    assert _echo_ok(node)


def test_instance_over_the_size_limit_is_refused(start_scp: Callable[..., RunningSCP]) -> None:
    node = start_scp(max_instance_bytes=10_000)
    assert _send(node, _good_dx(1)) == OUT_OF_RESOURCES
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "max_instance_bytes" in event.detail["reason"]


def _rejected_events(node: RunningSCP) -> list:
    deadline = time.monotonic() + 10  # the SCP audits right after it sent the reject
    while not node.events(AuditEventType.ASSOCIATION_REJECTED) and time.monotonic() < deadline:
        time.sleep(0.05)
    return node.events(AuditEventType.ASSOCIATION_REJECTED)


def test_nearly_full_disk_refuses_new_associations(start_scp: Callable[..., RunningSCP]) -> None:
    node = start_scp(min_free_disk_bytes=2**62)  # more than any disk has free
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.result == 0x02  # transient: try again later
    (event,) = _rejected_events(node)
    assert "disk" in event.detail["reason"]
    assert not any(node.store.root.rglob("*.dcm"))


def test_calling_ae_from_a_host_not_allowed_is_rejected(
    start_scp: Callable[..., RunningSCP],
) -> None:
    echoscu = require_binary("echoscu", "dcmtk")
    node = start_scp(allowed_calling_hosts={"KNOWN_PACS": ("127.0.0.2",)})
    refused = _echoscu(echoscu, node, "KNOWN_PACS")
    assert refused.returncode != 0
    (event,) = _rejected_events(node)
    assert event.actor == "KNOWN_PACS" and "not allowed" in event.detail["reason"]
    # Another AE without a host rule still gets in, and the node still answers.
    assert _echo_ok(node)


def test_truncated_dataset_is_refused(start_scp: Callable[..., RunningSCP], tmp_path: Path) -> None:
    node = start_scp()
    path = tmp_path / "whole.dcm"
    _good_dx(1).save_as(path, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # cut inside the pixel data element
    status = _send_file(node, truncated)
    assert status != 0
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    # The header was readable: the refusal is part of the study's story (audit --study).
    assert event.study_instance_uid == _good_dx(1).StudyInstanceUID
    assert not any(node.store.root.rglob("*.dcm"))
    assert _echo_ok(node)


def test_wrong_value_length_is_refused(
    start_scp: Callable[..., RunningSCP], tmp_path: Path
) -> None:
    node = start_scp()
    path = tmp_path / "bad-vr.dcm"
    _good_dx(1).save_as(path, enforce_file_format=True)
    data = bytearray(path.read_bytes())
    # Rows (0028,0010) US: give it a 3-byte value length, which no US value can have.
    tag = bytes.fromhex("28001000") + b"US"
    at = data.index(tag)
    data[at + 6 : at + 8] = (3).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    assert _send_file(node, path) == CANNOT_UNDERSTAND
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "cannot be decoded" in event.detail["reason"]
    assert _echo_ok(node)


def test_garbage_bytes_on_the_port_do_not_hurt_the_node(
    start_scp: Callable[..., RunningSCP],
) -> None:
    node = start_scp()
    for payload in (os.urandom(4096), b"\x01\x00\x00\x00\xff\xff\xff\xff" + os.urandom(64)):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                sock.recv(1024)
    assert _echo_ok(node)
    deadline = time.monotonic() + 10
    while len(node.events(AuditEventType.CONNECTION_DROPPED)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    dropped = node.events(AuditEventType.CONNECTION_DROPPED)
    assert len(dropped) == 2 and all(e.detail["address"] == "127.0.0.1" for e in dropped)


def test_unsupported_sop_class_is_refused_and_audited(start_scp: Callable[..., RunningSCP]) -> None:
    node = start_scp()
    worklist_find = "1.2.840.10008.5.1.4.31"  # Modality Worklist: not a storage service
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(worklist_find)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert not assoc.is_established  # no acceptable presentation context
    deadline = time.monotonic() + 10
    while not node.events(AuditEventType.ASSOCIATION_ACCEPTED) and time.monotonic() < deadline:
        time.sleep(0.05)
    (event,) = node.events(AuditEventType.ASSOCIATION_ACCEPTED)
    assert event.detail["refused_contexts"] == [worklist_find]
    assert _echo_ok(node)


def test_first_instances_of_one_study_over_concurrent_associations(
    start_scp: Callable[..., RunningSCP],
) -> None:
    """Four associations bring the first views of one study at once: all are stored."""
    from concurrent.futures import ThreadPoolExecutor

    node = start_scp()
    views = [_good_dx(index) for index in range(1, 9)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda ds: _send(node, ds), views))
    assert statuses == [0] * len(views)
    with node.sessions() as session:
        assert len(list(session.scalars(select(Instance)))) == len(views)
    assert not node.events(AuditEventType.INSTANCE_REFUSED)


def test_100000_by_100000_declared_image_is_refused(
    start_scp: Callable[..., RunningSCP], tmp_path: Path
) -> None:
    """US cannot hold 100000, so a hostile sender writes Rows/Columns with VR UL."""
    node = start_scp()
    path = tmp_path / "huge.dcm"
    _good_dx(1).save_as(path, enforce_file_format=True)
    data = bytes(path.read_bytes())
    for element in ("28001000", "28001100"):  # Rows, Columns: US, length 2
        at = data.index(bytes.fromhex(element) + b"US")
        data = (
            data[:at]
            + bytes.fromhex(element)
            + b"UL"
            + (4).to_bytes(2, "little")
            + (100_000).to_bytes(4, "little")
            + data[at + 10 :]
        )
    path.write_bytes(data)
    assert _send_file(node, path) == OUT_OF_RESOURCES
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "100000 x 100000" in event.detail["reason"]
    assert _echo_ok(node)


def test_associations_over_the_limit_are_rejected_transiently(
    start_scp: Callable[..., RunningSCP],
) -> None:
    node = start_scp(max_associations=1)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert first.is_established
    try:
        second = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
        assert second.is_rejected
        assert second.acceptor.primitive.result == 0x02  # transient: local limit exceeded
    finally:
        first.release()
    assert _echo_ok(node)
