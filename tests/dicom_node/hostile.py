"""Hostile and slow DICOM peers on raw sockets, and a good caller to time beside them."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from functools import cache

from pynetdicom import AE

VERIFICATION = "1.2.840.10008.1.1"
#: An A-ABORT from the service provider, invalid-PDU-parameter value (PS3.8 9.3.8).
ABORT_INVALID_PDU_PARAMETER = bytes.fromhex("07 00 00000004 00 00 02 06")


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def receive_exactly(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            break
        data += chunk
    return data


def receive_pdu(sock: socket.socket) -> bytes:
    """One whole PDU as the node sent it (b"" when it closed first)."""
    header = receive_exactly(sock, 6)
    if len(header) < 6:
        return header
    (length,) = struct.unpack(">L", header[2:])
    return header + receive_exactly(sock, length)


@cache
def association_request(called_ae: str, calling_ae: str = "HOSTILE") -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom sends for a C-ECHO, captured on a plain listener."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_requested_context(VERIFICATION)
        requestor = threading.Thread(
            target=ae.associate,
            args=("127.0.0.1", listener.getsockname()[1]),
            kwargs={"ae_title": called_ae},
            daemon=True,
        )
        requestor.start()
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(30)
            request = receive_pdu(connection)
        requestor.join(timeout=30)
    assert request[0] == 0x01, "not an A-ASSOCIATE-RQ"
    return request


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(60)
    return sock


def associate_raw(port: int, called_ae: str) -> socket.socket:
    """An established association on a raw socket (A-ASSOCIATE-AC received)."""
    sock = connect(port)
    sock.sendall(association_request(called_ae))
    accept = receive_pdu(sock)
    assert accept[:1] == b"\x02", f"no A-ASSOCIATE-AC: {accept[:10]!r}"
    return sock


def timed_echo(port: int, called_ae: str, tls_args: tuple | None = None) -> float | None:
    """Seconds a whole C-ECHO took (associate, echo, release); None when it failed."""
    ae = AE(ae_title="GOODCALLER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 60
    ae.add_requested_context(VERIFICATION)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
    try:
        if not assoc.is_established or assoc.send_c_echo().Status != 0:
            return None
    finally:
        if assoc.is_established:
            assoc.release()
    return time.monotonic() - started


class Drip:
    """Sends each socket's bytes one at a time, one byte per ``interval`` seconds, until
    stopped: peers that are never quite silent (slowloris)."""

    def __init__(self, payloads: dict[socket.socket, bytes], interval: float = 1.0) -> None:
        self._payloads = payloads
        self._interval = interval
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="drip", daemon=True)

    def _run(self) -> None:
        position = 0
        while not self._stop.wait(self._interval):
            for sock, payload in self._payloads.items():
                if position < len(payload):
                    with contextlib.suppress(OSError):
                        sock.sendall(payload[position : position + 1])
            position += 1
            self.sent = position

    @contextlib.contextmanager
    def running(self) -> Iterator[Drip]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
