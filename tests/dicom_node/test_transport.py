"""Bulk socket reads: the same bytes as pynetdicom's 4 KiB loop, over real sockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.receive.fastpath import BulkReceiveSocket


@pytest.fixture
def socket_pair() -> Iterator[tuple[BulkReceiveSocket, socket.socket]]:
    receiving, sending = socket.socketpair()
    bulk = BulkReceiveSocket(Association(AE(), "acceptor"), client_socket=receiving)
    yield bulk, sending
    receiving.close()
    sending.close()


def _send_in_pieces(sending: socket.socket, data: bytes, piece: int, close: bool) -> None:
    for start in range(0, len(data), piece):
        sending.sendall(data[start : start + piece])
    if close:
        sending.shutdown(socket.SHUT_WR)


def test_recv_returns_exactly_the_requested_bytes_sent_in_odd_pieces(
    socket_pair: tuple[BulkReceiveSocket, socket.socket],
) -> None:
    bulk, sending = socket_pair
    data = np.random.default_rng(0).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()
    sender = threading.Thread(target=_send_in_pieces, args=(sending, data, 7_919, False))
    sender.start()
    first = bulk.recv(1_000_003)
    rest = bulk.recv(len(data) - 1_000_003)
    sender.join()
    assert isinstance(first, bytearray)
    assert bytes(first) + bytes(rest) == data


def test_recv_returns_what_arrived_when_the_peer_closes_early(
    socket_pair: tuple[BulkReceiveSocket, socket.socket],
) -> None:
    bulk, sending = socket_pair
    _send_in_pieces(sending, b"\x04" * 1_000, 333, close=True)
    received = bulk.recv(262_144)
    assert received == bytearray(b"\x04" * 1_000)
    assert bulk.recv(6) == bytearray()
