"""Hostile peers against the real node (``fracture-triage serve``), over real sockets.

Each attack is held open while a good caller's C-ECHO runs. The node's timeouts are set
to 600 s here, so nothing the attackers hold can have been freed by a timeout when the
echo completes: the echo gets through because nothing they do blocks it. The node's
memory is read from /proc (VmRSS now, VmHWM the peak) before and during each attack.
The echo's latency is printed (run with ``-s``) and recorded as a test property; the
bound asserted on it is generous on purpose (a loaded machine is slow, not broken).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from config import TlsSettings
from db.engine import make_engine, make_session_factory
from db.models import AuditEvent
from dicom_node.tls import client_context
from tests.dicom_node.hostile import (
    ABORT_INVALID_PDU_PARAMETER,
    Drip,
    associate_raw,
    association_request,
    close_all,
    connect,
    pdu_header,
    receive_pdu,
    timed_echo,
)
from tests.peers import closed_by_peer, free_port, wait_for_port, wait_until
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.slow

AE_TITLE = "FRACTURE_TRIAGE"
#: The node's memory may grow by at most this much over its idle baseline under attack.
RSS_GROWTH_BOUND_KIB = 64 * 1024
#: Far longer than a C-ECHO takes even on a loaded machine, far shorter than the 600 s
#: the attackers could hold their connections.
ECHO_BOUND_SECONDS = 60
HOLD_SECONDS = 600


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int
    database_url: str
    log: Path

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the node's process."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def reasons(self, event_type: str) -> list[str]:
        engine = make_engine(self.database_url)
        try:
            with make_session_factory(engine)() as session:
                events = session.scalars(
                    select(AuditEvent).where(AuditEvent.event_type == event_type)
                )
                return [str(event.detail.get("reason")) for event in events]
        finally:
            engine.dispose()


@contextmanager
def _serve(directory: Path, bundle: Path, tls: Pki | None = None) -> Iterator[Node]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database_url = f"sqlite:///{directory / 'audit.db'}"
    config = [
        f"port = {port}",
        f'store_dir = "{directory / "store"}"',
        f'output_dir = "{directory / "outputs"}"',
        f'database_url = "{database_url}"',
        f'model_bundle_dir = "{bundle}"',  # a node starts only with a loadable model
        f"association_request_timeout_seconds = {HOLD_SECONDS}",
        f"idle_timeout_seconds = {HOLD_SECONDS}",
    ]
    if tls is not None:
        config += [
            "[tls]",
            f'cert_file = "{tls.server_cert}"',
            f'key_file = "{tls.server_key}"',
            f'ca_file = "{tls.ca}"',
        ]
    (directory / "node.toml").write_text("\n".join(config) + "\n")
    env = {**os.environ, "PREFECT_HOME": str(directory / "prefect")}
    log = directory / "node.log"
    command = [sys.executable, "-m", "flows.cli.app", "serve", "--config"]
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [*command, str(directory / "node.toml")], env=env, stdout=handle, stderr=handle
        )
    try:
        wait_for_port(port, timeout=180, process=process)
        yield Node(process, port, database_url, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_bundle: Path) -> Iterator[Node]:
    with _serve(tmp_path_factory.mktemp("hostile-node"), test_bundle) as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("hostile-pki"))


def _baseline(node: Node, tls_args: tuple | None = None) -> tuple[int, int]:
    """The node's memory once it has served one good association (threads, imports)."""
    assert timed_echo(node.port, AE_TITLE, tls_args) is not None
    return node.memory_kib()


def _good_echo_beside(
    node: Node,
    held: list[socket.socket],
    baseline: tuple[int, int],
    record_property: pytest.RecordProperty,
    tls_args: tuple | None = None,
) -> float:
    """A good C-ECHO while ``held`` stay open; the node's memory checked meanwhile."""
    latency = timed_echo(node.port, AE_TITLE, tls_args)
    assert latency is not None, node.log.read_text(errors="replace")[-3000:]
    still_open = [not closed_by_peer(sock) for sock in held]
    rss, hwm = node.memory_kib()
    rss_growth, peak_growth = rss - baseline[0], max(0, hwm - max(baseline))
    print(
        f"\nC-ECHO beside {len(held)} hostile connections: {latency * 1000:.0f} ms; "
        f"node RSS {baseline[0] // 1024} -> {rss // 1024} MiB (+{rss_growth} KiB), "
        f"peak +{peak_growth} KiB"
    )
    record_property("echo_ms", round(latency * 1000))
    record_property("rss_growth_kib", rss_growth)
    record_property("peak_growth_kib", peak_growth)
    assert all(still_open), f"{still_open.count(False)} hostile connections were closed"
    assert latency < ECHO_BOUND_SECONDS
    assert rss_growth < RSS_GROWTH_BOUND_KIB and peak_growth < RSS_GROWTH_BOUND_KIB
    return latency


def test_a_4_gib_declared_pdu_is_aborted_without_allocating(
    node: Node, record_property: pytest.RecordProperty
) -> None:
    baseline = _baseline(node)
    with connect(node.port) as before_association:
        before_association.sendall(pdu_header(0x01, 0xFFFFFFFF))
        assert receive_pdu(before_association) == ABORT_INVALID_PDU_PARAMETER
    with associate_raw(node.port, AE_TITLE) as associated:
        associated.sendall(pdu_header(0x04, 0xFFFFFFFF))
        assert receive_pdu(associated) == ABORT_INVALID_PDU_PARAMETER
    _good_echo_beside(node, [], baseline, record_property)
    assert wait_until(
        lambda: (
            any("4294967295" in r for r in node.reasons("connection_dropped"))
            and any("4294967295" in r for r in node.reasons("association_aborted"))
        )
    )


def test_50_concurrent_4_gib_headers_and_50_held_requests(
    node: Node, record_property: pytest.RecordProperty
) -> None:
    """50 connections declaring 4 GiB each get an A-ABORT at once; 50 more declare the
    largest request allowed (64 KiB), send 10 bytes of it and hold on."""
    baseline = _baseline(node)
    huge = [connect(node.port) for _ in range(50)]
    held = [connect(node.port) for _ in range(50)]
    try:
        for sock in huge:
            sock.sendall(pdu_header(0x01, 0xFFFFFFFF))
        for sock in held:
            sock.sendall(pdu_header(0x01, 64 * 1024) + b"\x00" * 10)
        assert [receive_pdu(sock) for sock in huge] == [ABORT_INVALID_PDU_PARAMETER] * 50
        _good_echo_beside(node, held, baseline, record_property)
    finally:
        close_all(huge + held)
    assert wait_until(
        lambda: sum("4294967295" in r for r in node.reasons("connection_dropped")) >= 50
    )


def test_slow_drip_requests_and_association_do_not_hold_up_a_good_caller(
    node: Node, record_property: pytest.RecordProperty
) -> None:
    """20 connections drip an A-ASSOCIATE-RQ one byte a second, and an established
    association drips a P-DATA-TF PDU: none of it delays the good caller."""
    baseline = _baseline(node)
    requests = [connect(node.port) for _ in range(20)]
    associated = associate_raw(node.port, AE_TITLE)
    payloads = {sock: association_request(AE_TITLE) for sock in requests}
    payloads[associated] = pdu_header(0x04, 262_144) + b"\x00" * 100
    try:
        with Drip(payloads, interval=1.0).running() as drip:
            assert wait_until(lambda: drip.sent >= 3, timeout=60)  # all dripping by now
            _good_echo_beside(node, [*requests, associated], baseline, record_property)
            assert drip.sent < 64  # none of the requests was complete yet
    finally:
        close_all([*requests, associated])


def test_20_stalled_tls_handshakes_leave_a_good_tls_echo_working(
    tmp_path_factory: pytest.TempPathFactory,
    test_bundle: Path,
    pki: Pki,
    record_property: pytest.RecordProperty,
) -> None:
    """10 connections say nothing, 10 send the first bytes of a ClientHello and stop."""
    identity = TlsSettings(cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.ca)
    tls_args: tuple[ssl.SSLContext, str] = (client_context(identity), "127.0.0.1")
    with _serve(tmp_path_factory.mktemp("hostile-tls-node"), test_bundle, tls=pki) as tls_node:
        baseline = _baseline(tls_node, tls_args)
        stalled = [connect(tls_node.port) for _ in range(20)]
        try:
            for sock in stalled[10:]:
                sock.sendall(bytes.fromhex("16 03 01 02 00 01 00 01 fc 03 03"))
            _good_echo_beside(tls_node, stalled, baseline, record_property, tls_args)
        finally:
            close_all(stalled)
