"""MLLP delivery with the hl7 package's client: outcomes, timeouts, a fragmented answer,
and the client attributes our subclass relies on (pinned to hl7 0.4.5's MLLPClient)."""

from __future__ import annotations

import datetime as dt
import inspect
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import hl7
import hl7.client
import pytest
from pydicom import Dataset

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.delivery.mllp import TimedMLLPClient, send_mllp
from dicom_node.hl7.oru import build_oru_r01
from tests.hl7_listener import run_mllp_listener
from tests.peers import free_port

NOW = dt.datetime(2024, 1, 2, 10, 30, tzinfo=dt.UTC)


def _oru(dx: Dataset, finding: StudyFinding, algorithm: AlgorithmIdentity) -> str:
    return build_oru_r01(dx, finding, algorithm, control_id="MSG0001", now=NOW)


def test_the_parent_client_uses_only_the_attributes_our_constructor_sets() -> None:
    """hl7.client.MLLPClient's methods read ``self.socket`` and ``self.encoding`` only."""
    source = inspect.getsource(hl7.client.MLLPClient)
    attributes = set(re.findall(r"self\.([a-z_]+)", source))
    methods = {"send", "send_message", "close"}
    assert attributes - methods == {"socket", "encoding"}
    assert (hl7.client.SB, hl7.client.EB, hl7.client.CR) == (b"\x0b", b"\x1c", b"\x0d")
    assert issubclass(TimedMLLPClient, hl7.client.MLLPClient)


@pytest.mark.peers
def test_mllp_delivery_to_a_real_listener(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    message = _oru(dx_image, positive_finding, algorithm)
    with run_mllp_listener() as listener:
        result = send_mllp(message, "127.0.0.1", listener.port, timeout=10)
        assert result.success, result.error
        (received,) = listener.wait_for(1)
    assert hl7.parse(received).segment("OBR")[2] == hl7.parse(message).segment("OBR")[2]
    assert "MSA|AA|MSG0001" in (result.acknowledgement or "")


@pytest.mark.peers
@pytest.mark.parametrize(("code", "permanent"), [("AR", True), ("AE", False)])
def test_refusals_are_permanent_and_errors_transient(
    dx_image: Dataset,
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    code: str,
    permanent: bool,
) -> None:
    with run_mllp_listener(ack_code=code) as listener:
        result = send_mllp(
            _oru(dx_image, positive_finding, algorithm), "127.0.0.1", listener.port, timeout=10
        )
    assert not result.success and result.permanent is permanent
    assert code in (result.error or "")


def test_nobody_listening_is_a_transient_failure(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    result = send_mllp(
        _oru(dx_image, positive_finding, algorithm), "127.0.0.1", free_port(), timeout=5
    )
    assert not result.success and not result.permanent
    assert "MLLP" in (result.error or "")


@contextmanager
def _raw_peer(answer: list[bytes]) -> Iterator[int]:
    """A TCP peer that reads one message and writes ``answer``'s chunks, one by one
    (nothing: it stays silent until the client gives up)."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            buffer = b""
            while b"\x1c\x0d" not in buffer:
                buffer += connection.recv(65536)
            for chunk in answer:
                connection.sendall(chunk)
                done.wait(0.05)  # let the client read this chunk alone
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=30)
        server.close()


def test_an_acknowledgement_in_pieces_is_read_whole(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    ack = b"\x0bMSH|^~\\&|RIS||FRACTURE_TRIAGE||20240102||ACK|1|P|2.5.1\rMSA|AA|MSG0001\x1c\x0d"
    with _raw_peer([ack[:20], ack[20:45], ack[45:]]) as port:
        result = send_mllp(
            _oru(dx_image, positive_finding, algorithm), "127.0.0.1", port, timeout=10
        )
    assert result.success, result.error


def test_a_silent_ris_is_a_transient_failure_after_the_timeout(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    with _raw_peer([]) as port:
        result = send_mllp(
            _oru(dx_image, positive_finding, algorithm), "127.0.0.1", port, timeout=1
        )
    assert not result.success and not result.permanent
    assert "timeout" in (result.error or "").lower()
