"""Bounded PDU reads (dicom_node.receive.wire) over real socket pairs: the bytes sent,
buffers that grow only as bytes arrive, length caps, deadlines and byte budgets."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from dicom_node.receive.wire import (
    AbortReason,
    BudgetExceededError,
    ConnectionAllowance,
    Deadline,
    PduReader,
    ReceiveBudget,
    ReceiveLimits,
    TransportRefusedError,
    abort_pdu,
    read_association_request,
    receive,
)

LIMITS = ReceiveLimits(
    association_request_timeout=30,
    idle_timeout=30,
    max_pdata_length=262_144,
    connection_budget=8 * 1024**2,
    max_pending_connections=10,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiving, sending = socket.socketpair()
    yield receiving, sending
    receiving.close()
    sending.close()


def _allowance(limit: int = 8 * 1024**2, total: int = 16 * 1024**2) -> ConnectionAllowance:
    return ConnectionAllowance(ReceiveBudget(total), limit)


def _send_in_pieces(sending: socket.socket, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        sending.sendall(data[start : start + piece])


def _header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def test_receive_returns_exactly_the_bytes_sent_in_odd_pieces(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    data = np.random.default_rng(0).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()
    sender = threading.Thread(target=_send_in_pieces, args=(sending, data, 7_919))
    sender.start()
    allowance = _allowance()
    first = receive(receiving, 1_000_003, Deadline(30), allowance)
    rest = receive(receiving, len(data) - 1_000_003, Deadline(30), allowance)
    sender.join()
    assert bytes(first) + bytes(rest) == data
    assert allowance.held == 0  # released on return: the caller accounts for what it keeps


def test_receive_returns_what_arrived_when_the_peer_closes_early(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    _send_in_pieces(sending, b"\x04" * 1_000, 333)
    sending.shutdown(socket.SHUT_WR)
    assert receive(receiving, 262_144, Deadline(30), _allowance()) == b"\x04" * 1_000
    assert receive(receiving, 6, Deadline(30), _allowance()) == b""


def test_a_declared_4_gib_costs_only_what_arrives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A 64 KiB budget suffices to read 1,000 bytes of a 4 GiB read: nothing up front."""
    receiving, sending = pair
    sending.sendall(b"\x01" * 1_000)
    sending.shutdown(socket.SHUT_WR)
    budget = ReceiveBudget(64 * 1024)
    assert len(receive(receiving, 0xFFFFFFFF, Deadline(30), ConnectionAllowance(budget, 2**40)))
    assert budget.in_use == 0


def test_receive_stops_at_its_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    receiving, sending = pair
    sending.sendall(b"\x01")  # one byte of six, then silence
    with pytest.raises(TimeoutError):
        receive(receiving, 6, Deadline(0.2), _allowance())


@pytest.mark.parametrize(("connection", "total"), [(32 * 1024, 1024**2), (1024**2, 32 * 1024)])
def test_receive_refuses_past_either_budget(
    pair: tuple[socket.socket, socket.socket], connection: int, total: int
) -> None:
    receiving, sending = pair
    sending.sendall(b"\x00" * 100_000)
    allowance = ConnectionAllowance(ReceiveBudget(total), connection)
    with pytest.raises(BudgetExceededError, match="budget") as refused:
        receive(receiving, 100_000, Deadline(30), allowance)
    assert "receive_" in str(refused.value)
    assert allowance.held == 0


def test_abort_pdu_is_a_service_provider_abort_with_the_reason() -> None:
    assert abort_pdu(AbortReason.INVALID_PDU_PARAMETER_VALUE) == bytes.fromhex(
        "07 00 00000004 00 00 02 06"
    )


@pytest.mark.parametrize(
    ("first", "reason", "abort"),
    [
        (_header(0x01, 0xFFFFFFFF), "declares 4294967295 bytes", 0x06),
        (_header(0x04, 10) + b"\x00" * 10, "not an A-ASSOCIATE-RQ", 0x02),
        (_header(0x09, 10), "not an A-ASSOCIATE-RQ", 0x01),
        (_header(0x07, 4) + b"\x00" * 4, "aborted by the peer", None),
        (_header(0x01, 100) + b"\x00" * 50, "before the A-ASSOCIATE-RQ was complete", None),
        (b"\x01\x00", "before an A-ASSOCIATE-RQ", None),
    ],
)
def test_first_pdu_refusals_follow_ps3_8_state_2(
    pair: tuple[socket.socket, socket.socket], first: bytes, reason: str, abort: int | None
) -> None:
    receiving, sending = pair
    sending.sendall(first)
    sending.shutdown(socket.SHUT_WR)
    with pytest.raises(TransportRefusedError, match=reason) as refused:
        read_association_request(receiving, LIMITS, _allowance(), Deadline(30))
    assert refused.value.abort == abort


def test_association_request_timeout_ends_a_slow_request(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    sending.sendall(_header(0x01, 1_000) + b"\x00" * 10)
    with pytest.raises(TransportRefusedError, match="association_request_timeout") as refused:
        read_association_request(receiving, LIMITS, _allowance(), Deadline(0.2))
    assert refused.value.abort is None  # ARTIM expiry closes without an A-ABORT (AA-2)


def _pdv(data: bytes, last: bool, command: bool = False) -> bytes:
    control = (0x02 if last else 0) | (0x01 if command else 0)
    return struct.pack(">LBB", len(data) + 2, 1, control) + data


def _p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return _header(0x04, len(body)) + body


def test_pdu_reader_replays_the_request_then_reads_capped_pdus(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    request = bytearray(_header(0x01, 3) + b"abc")
    reader = PduReader(LIMITS, _allowance(), request)
    assert reader.has_replay
    assert reader.read(receiving, 6) + reader.read(receiving, 3) == _header(0x01, 3) + b"abc"
    assert not reader.has_replay
    sending.sendall(_header(0x04, LIMITS.max_pdata_length + 1))
    with pytest.raises(TransportRefusedError, match="P-DATA-TF declares 262145") as refused:
        reader.read(receiving, 6)
    assert refused.value.abort == AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_data_set_fragments_are_held_until_the_last(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    allowance = _allowance(limit=25_000)
    reader = PduReader(LIMITS, allowance, bytearray())
    for pdu, held in [
        (_p_data(_pdv(b"c" * 50, last=True, command=True)), 0),
        (_p_data(_pdv(b"d" * 10_000, last=False)), 10_000),
        (_p_data(_pdv(b"d" * 10_000, last=False)), 20_000),
        (_p_data(_pdv(b"d" * 100, last=True)), 0),
    ]:
        sending.sendall(pdu)
        reader.read(receiving, 6)
        reader.read(receiving, len(pdu) - 6)
        assert allowance.held == held
    for _ in range(2):  # a data set that never ends passes the connection's budget
        pdu = _p_data(_pdv(b"d" * 10_000, last=False))
        sending.sendall(pdu)
        reader.read(receiving, 6)
        reader.read(receiving, len(pdu) - 6)
    sending.sendall(pdu)
    reader.read(receiving, 6)
    with pytest.raises(TransportRefusedError, match="receive_connection_budget_bytes"):
        reader.read(receiving, len(pdu) - 6)
    reader.release()
    assert allowance.held == 0


def test_a_pdu_dripping_past_the_idle_timeout_is_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiving, sending = pair
    limits = ReceiveLimits(30, 0.3, 262_144, 1024**2, 10)
    reader = PduReader(limits, _allowance(), bytearray())
    sending.sendall(_header(0x04, 100) + b"\x00" * 10)
    reader.read(receiving, 6)
    with pytest.raises(TransportRefusedError, match="idle_timeout_seconds") as refused:
        reader.read(receiving, 100)
    assert refused.value.abort == AbortReason.NOT_SPECIFIED
