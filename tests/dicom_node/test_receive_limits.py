"""Receive limits of the SCP over real sockets: PDU caps, ARTIM, the idle timeout, byte
budgets and the pending-connection limit, each refused with the PS3.8 answer and audited.

The node in this process (tests/dicom_node/test_scp.RunningSCP); the same attacks against
the node started as ``fracture-triage serve`` are in test_hostile_peers.py.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

from config import SettingsError, load_settings
from db.audit import AuditEventType
from tests.dicom_node.conftest import make_dx
from tests.dicom_node.hostile import (
    ABORT_INVALID_PDU_PARAMETER,
    associate_raw,
    close_all,
    connect,
    pdu_header,
    receive_pdu,
    timed_echo,
)
from tests.dicom_node.test_scp import RunningSCP
from tests.peers import closed_by_peer, wait_until

AE_TITLE = "FRACTURE_TRIAGE"


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., RunningSCP]]:
    started: list[RunningSCP] = []

    def start(**overrides: object) -> RunningSCP:
        values: dict[str, object] = {
            "port": 0,
            "store_dir": tmp_path / "store",
            "database_url": f"sqlite:///{tmp_path / 'audit.db'}",
            "association_request_timeout_seconds": 600,
            "idle_timeout_seconds": 600,
        }
        node = RunningSCP(load_settings(None, **{**values, **overrides}))
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _events(node: RunningSCP, kind: AuditEventType, count: int = 1) -> list:
    assert wait_until(lambda: len(node.events(kind)) >= count), f"no {kind} audited"
    return node.events(kind)


def test_first_pdu_declaring_4_gib_is_aborted_and_audited(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node()
    with connect(node.port) as sock:
        sock.sendall(pdu_header(0x01, 0xFFFFFFFF))
        assert receive_pdu(sock) == ABORT_INVALID_PDU_PARAMETER
        assert wait_until(lambda: closed_by_peer(sock))
    (event,) = _events(node, AuditEventType.CONNECTION_DROPPED)
    assert (
        "A-ASSOCIATE-RQ declares 4294967295 bytes, over the 65536-byte maximum"
        in (event.detail["reason"])
    )
    assert node.scp.receive_budget.in_use == 0
    assert timed_echo(node.port, AE_TITLE) is not None


def test_p_data_declaring_4_gib_aborts_the_association(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node()
    with associate_raw(node.port, AE_TITLE) as sock:
        sock.sendall(pdu_header(0x04, 0xFFFFFFFF))
        assert receive_pdu(sock) == ABORT_INVALID_PDU_PARAMETER
    (event,) = _events(node, AuditEventType.ASSOCIATION_ABORTED)
    assert event.actor == "HOSTILE"
    assert (
        "P-DATA-TF declares 4294967295 bytes, over the 262144-byte maximum"
        in (event.detail["reason"])
    )
    assert timed_echo(node.port, AE_TITLE) is not None


def test_silent_connection_is_closed_at_artim_and_audited(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node(association_request_timeout_seconds=0.5)
    with connect(node.port) as sock:
        sock.sendall(pdu_header(0x01, 1_000))  # a request that never completes
        assert wait_until(lambda: closed_by_peer(sock))
        assert sock.recv(64) == b""  # ARTIM expiry closes without an A-ABORT (AA-2)
    (event,) = _events(node, AuditEventType.CONNECTION_DROPPED)
    assert "within association_request_timeout_seconds (0.5 s)" in event.detail["reason"]


def test_pdu_dripping_past_the_idle_timeout_aborts_the_association(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node(idle_timeout_seconds=0.5)
    with associate_raw(node.port, AE_TITLE) as sock:
        sock.sendall(pdu_header(0x04, 1_000) + b"\x00")  # then nothing more
        assert receive_pdu(sock) == bytes.fromhex("07 00 00000004 00 00 02 00")
    (event,) = _events(node, AuditEventType.ASSOCIATION_ABORTED)
    assert "not received in full within idle_timeout_seconds (0.5 s)" in event.detail["reason"]


def test_idle_association_is_aborted_and_audited(start_node: Callable[..., RunningSCP]) -> None:
    node = start_node(idle_timeout_seconds=0.5)
    with associate_raw(node.port, AE_TITLE) as sock:
        assert receive_pdu(sock)[:1] == b"\x07"  # A-ABORT after 0.5 s without a PDU
    (event,) = _events(node, AuditEventType.ASSOCIATION_ABORTED)
    assert event.actor == "HOSTILE"
    assert event.detail["reason"] == "no PDU within idle_timeout_seconds (0.5 s)"


def test_data_set_over_the_connection_budget_aborts_the_association(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node(receive_connection_budget_bytes=300_000)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    big = make_dx(
        study_instance_uid="1.2.826.0.1.3680043.10.11",
        series_instance_uid="1.2.826.0.1.3680043.10.11.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.11.1.1",
        rows=512,
        columns=512,  # 512 KiB of pixels
    )
    assoc.send_c_store(big)
    assert wait_until(lambda: assoc.is_aborted)
    (event,) = _events(node, AuditEventType.ASSOCIATION_ABORTED)
    assert "receive_connection_budget_bytes (300000)" in event.detail["reason"]
    assert not any(node.store.root.rglob("*.dcm"))
    assert wait_until(lambda: node.scp.receive_budget.in_use == 0)


def test_connections_over_the_pending_limit_are_closed_and_counted(
    start_node: Callable[..., RunningSCP],
) -> None:
    node = start_node(max_pending_connections=2)
    waiting = [connect(node.port) for _ in range(2)]
    refused = [connect(node.port) for _ in range(3)]
    try:
        assert wait_until(lambda: all(closed_by_peer(sock) for sock in refused))
        assert not any(closed_by_peer(sock) for sock in waiting)
    finally:
        close_all(waiting + refused)
    # The two waiting connections close without a byte: counted, not audited.
    (tally,) = _events(node, AuditEventType.CONNECTION_DROPPED)
    assert "max_pending_connections (2)" in tally.detail["reason"]
    assert tally.detail["connections"] == 3
    assert wait_until(lambda: node.scp.connection_probes == 2)
    assert timed_echo(node.port, AE_TITLE) is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_pdu_bytes": 32 * 1024**2}, "max_pdu_bytes"),
        (
            {"receive_connection_budget_bytes": 2 * 1024**3, "receive_budget_bytes": 1024**3},
            "must not exceed receive_budget_bytes",
        ),
        ({"receive_connection_budget_bytes": 100_000}, "at least one whole PDU"),
        ({"association_request_timeout_seconds": 0}, "association_request_timeout_seconds"),
        ({"max_pending_connections": 0}, "max_pending_connections"),
    ],
)
def test_receive_settings_are_validated(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, **overrides)


def test_zero_max_pdu_announces_the_ceiling() -> None:
    assert load_settings(None, max_pdu_bytes=0).pdu_length_announced == 16 * 1024**2


def test_connections_that_send_nothing_are_counted_not_audited(
    start_node: Callable[..., RunningSCP],
) -> None:
    """A TCP health check (connect, close) and a reset are probes: no audit event, one
    count each; a connection that sends bytes that are no request is still audited."""
    node = start_node()
    connect(node.port).close()
    reset = connect(node.port)
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # RST instead of FIN
    assert wait_until(lambda: node.scp.connection_probes == 2)
    with connect(node.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        (event,) = _events(node, AuditEventType.CONNECTION_DROPPED)
    assert "unknown PDU type 0x47" in event.detail["reason"]
    assert node.scp.connection_probes == 2
    assert timed_echo(node.port, AE_TITLE) is not None
