"""DICOM over TLS: the SCP with a server certificate and required client certificates,
pynetdicom and dcmtk (echoscu, storescu) as TLS peers, plain TCP refused."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import select

from config import Destination, Settings, TlsSettings, load_settings
from db.audit import AuditEventType, AuditLog
from db.models import Instance
from dicom_node import tls as node_tls
from dicom_node.delivery.dimse import send_files
from dicom_node.tls import client_context
from tests.dicom_node.conftest import make_dx
from tests.dicom_node.test_scp import RunningSCP
from tests.peers import closed_by_peer, require, require_binary, wait_until
from tests.pki import Pki, make_pki

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_settings(tmp_path: Path, pki: Pki, **overrides: object) -> Settings:
    return load_settings(
        None,
        port=0,
        store_dir=tmp_path / "store",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
        tls={"cert_file": pki.server_cert, "key_file": pki.server_key, "ca_file": pki.ca},
        **overrides,
    )


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[RunningSCP]:
    """The SCP on a free port, TLS with the test server certificate, client certs required."""
    node = RunningSCP(_tls_settings(tmp_path, pki))
    yield node
    node.stop()


def _client_identity(pki: Pki) -> TlsSettings:
    return TlsSettings(cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.ca)


def _echo(node: RunningSCP, tls_args: tuple | None, timeout: float = 10) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title, tls_args=tls_args)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def _dx_file(directory: Path, index: int = 1) -> Path:
    ds = make_dx(
        study_instance_uid="1.2.826.0.1.3680043.10.1.3",
        series_instance_uid="1.2.826.0.1.3680043.10.1.3.1",
        sop_instance_uid=f"1.2.826.0.1.3680043.10.1.3.1.{index}",
        seed=index,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dx{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _stored_uids(node: RunningSCP) -> list[str]:
    with node.sessions() as session:
        return [i.sop_instance_uid for i in session.scalars(select(Instance).order_by(Instance.id))]


def test_pynetdicom_echo_and_store_over_tls(tls_node: RunningSCP, pki: Pki, tmp_path: Path) -> None:
    context = client_context(_client_identity(pki))
    assert _echo(tls_node, (context, "127.0.0.1"))

    path = _dx_file(tmp_path / "send")
    destination = Destination(
        name="node", ae_title=tls_node.settings.ae_title, host="127.0.0.1", port=tls_node.port
    )
    (outcome,) = send_files([path], destination, "TESTSCU", tls=context)
    assert outcome.success, outcome.error
    assert _stored_uids(tls_node) == ["1.2.826.0.1.3680043.10.1.3.1.1"]


def test_tls_connections_handed_to_a_receiver_process(tmp_path: Path, pki: Pki) -> None:
    """With scp_processes = 2 every other connection is the receiver's: the TLS
    handshake happens there (a TLS session cannot cross processes), plain TCP refused."""
    node = RunningSCP(_tls_settings(tmp_path, pki, scp_processes=2))
    try:
        identity = (client_context(_client_identity(pki)), "127.0.0.1")
        assert [_echo(node, identity) for _ in range(4)] == [True] * 4
        assert not _echo(node, None) and not _echo(node, None)
        assert _echo(node, identity)
        with node.sessions() as session:
            accepted = AuditLog(session).of_type(AuditEventType.ASSOCIATION_ACCEPTED)
        assert {event.detail["receiver_pid"] for event in accepted} == {
            os.getpid(),
            *node.scp.receiver_pids,
        }
    finally:
        node.stop()


def test_plain_tcp_association_is_refused(tls_node: RunningSCP, pki: Pki) -> None:
    assert not _echo(tls_node, None)
    # The node still serves TLS peers afterwards.
    assert _echo(tls_node, (client_context(_client_identity(pki)), "127.0.0.1"))


def test_client_without_certificate_is_refused(tls_node: RunningSCP, pki: Pki) -> None:
    anonymous = client_context(None, pki.ca)  # trusts the node, offers no certificate
    assert not _echo(tls_node, (anonymous, "127.0.0.1"))


def test_node_with_untrusted_certificate_is_not_sent_to(
    tls_node: RunningSCP, pki: Pki, tmp_path: Path
) -> None:
    identity = TlsSettings(cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.other_ca)
    destination = Destination(
        name="node", ae_title=tls_node.settings.ae_title, host="127.0.0.1", port=tls_node.port
    )
    (outcome,) = send_files(
        [_dx_file(tmp_path / "send")], destination, "TESTSCU", tls=client_context(identity)
    )
    assert not outcome.success
    assert _stored_uids(tls_node) == []


def test_silent_peers_do_not_hold_up_a_tls_caller(tmp_path: Path, pki: Pki) -> None:
    """Handshakes happen in each connection's thread: peers that connect and never say
    hello (ARTIM far away) leave the accept loop free for a good caller."""
    node = RunningSCP(_tls_settings(tmp_path, pki, association_request_timeout_seconds=600))
    silent = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(5)]
    try:
        assert _echo(node, (client_context(_client_identity(pki)), "127.0.0.1"), timeout=30)
        assert not any(closed_by_peer(sock) for sock in silent)
    finally:
        for sock in silent:
            sock.close()
        node.stop()


def test_stalled_handshake_is_closed_after_artim_and_audited(tmp_path: Path, pki: Pki) -> None:
    node = RunningSCP(_tls_settings(tmp_path, pki, association_request_timeout_seconds=0.5))
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as silent:
            assert wait_until(lambda: closed_by_peer(silent))
        assert wait_until(lambda: bool(node.events(AuditEventType.CONNECTION_DROPPED)))
        (event,) = node.events(AuditEventType.CONNECTION_DROPPED)
        assert "TLS handshake not complete" in event.detail["reason"]
        assert event.detail["address"] == "127.0.0.1"
        assert _echo(node, (client_context(_client_identity(pki)), "127.0.0.1"))
    finally:
        node.stop()


def _dcmtk_tls(binary: str) -> str:
    path = require_binary(binary, "dcmtk")
    help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    require("--enable-tls" in help_text.stdout, f"this dcmtk {binary} is built without TLS")
    return path


def _dcmtk_tls_args(pki: Pki) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]


def test_dcmtk_echoscu_over_tls(tls_node: RunningSCP, pki: Pki) -> None:
    echoscu = _dcmtk_tls("echoscu")
    command = [echoscu, *_dcmtk_tls_args(pki), "-aec", tls_node.settings.ae_title]
    result = subprocess.run(
        [*command, "127.0.0.1", str(tls_node.port)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without TLS the same peer gets nowhere.
    plain = subprocess.run(
        [echoscu, "-aec", tls_node.settings.ae_title, "127.0.0.1", str(tls_node.port)],
        capture_output=True,
        timeout=30,
    )
    assert plain.returncode != 0


def test_dcmtk_storescu_over_tls(tls_node: RunningSCP, pki: Pki, tmp_path: Path) -> None:
    storescu = _dcmtk_tls("storescu")
    path = _dx_file(tmp_path / "send", index=2)
    command = [storescu, *_dcmtk_tls_args(pki), "-aet", "MODALITY", "-aec"]
    result = subprocess.run(
        [*command, tls_node.settings.ae_title, "127.0.0.1", str(tls_node.port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stored_uids(tls_node) == ["1.2.826.0.1.3680043.10.1.3.1.2"]


def test_server_context_requires_tls_1_2(pki: Pki) -> None:
    server = node_tls.server_context(
        TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca)
    )
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    no_ca = node_tls.server_context(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    assert no_ca.verify_mode == ssl.CERT_NONE
    client = client_context(None)
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
