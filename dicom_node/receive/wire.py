"""Reading DICOM Upper Layer PDUs off a socket within limits (PS3.8 section 9).

Nothing a peer declares is trusted before its bytes arrive: a PDU's declared length is
checked against a cap for its type before anything is allocated, and its buffer grows
only as bytes arrive (doubling, from :data:`FIRST_CHUNK`), reserved first against the
connection's and the process's byte budgets. Every read has a deadline: a PDU must
arrive in full before it, however slowly its bytes trickle in (slowloris).

This module knows sockets and PDU framing, not pynetdicom's internals: the pynetdicom
side is :mod:`dicom_node.receive.fastpath`.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pynetdicom.pdu import A_ABORT_RQ

#: PDU type and length: the 6 bytes before every PDU's variable fields.
PDU_HEADER_LENGTH = 6
#: The first allocation for a PDU's body; it doubles as the bytes arrive.
FIRST_CHUNK = 16 * 1024
#: Cap on every PDU but P-DATA-TF: an A-ASSOCIATE-RQ proposing every storage SOP class with
#: several transfer syntaxes each is about 20 KB; A-RELEASE and A-ABORT PDUs are 4 bytes.
ASSOCIATION_PDU_CEILING = 64 * 1024
#: The ``recv_into`` step of pynetdicom's own reads, for ``bulk_reads=False`` (benchmarks).
STOCK_READ_STEP = 4096


class PduType(enum.IntEnum):
    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


_KNOWN_PDU_TYPES = frozenset(int(pdu_type) for pdu_type in PduType)
_T = TypeVar("_T")


class AbortReason(enum.IntEnum):
    """A-ABORT reasons of the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0x00
    UNRECOGNISED_PDU = 0x01
    UNEXPECTED_PDU = 0x02
    UNRECOGNISED_PDU_PARAMETER = 0x04
    UNEXPECTED_PDU_PARAMETER = 0x05
    INVALID_PDU_PARAMETER_VALUE = 0x06


def abort_pdu(reason: AbortReason) -> bytes:
    """An A-ABORT PDU from the service provider (source 2) with ``reason``."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = int(reason)
    return pdu.encode()


class TransportRefusedError(Exception):
    """The connection ends here; ``abort``: the A-ABORT reason to send first (None: close
    without one, as PS3.8 does on ARTIM expiry or a peer that closed)."""

    def __init__(self, reason: str, abort: AbortReason | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.abort = abort


class ClosedSilentlyError(TransportRefusedError):
    """The peer closed (or reset) the connection before sending a single byte: a TCP
    health check, a load balancer's probe or a port scan. Counted, not audited."""

    def __init__(self) -> None:
        super().__init__("connection closed before sending a byte")


class BudgetExceededError(Exception):
    """A reservation would pass the connection's or the process's receive budget."""


#: Seconds an A-ABORT may take to leave; a peer that does not read is not waited for.
ABORT_SEND_TIMEOUT = 2.0


class TransportEventKind(enum.StrEnum):
    #: A connection closed before it became an association (no valid A-ASSOCIATE-RQ).
    DROPPED = "dropped"
    #: An association the transport aborted (a PDU over its cap, a budget, a timeout).
    ABORTED = "aborted"
    #: A connection closed before it sent a byte (ClosedSilentlyError): counted only.
    PROBED = "probed"


@dataclass(frozen=True)
class TransportEvent:
    """What the transport refused, for the audit trail: never a byte of the peer's data."""

    kind: TransportEventKind
    reason: str
    address: str
    port: int
    calling_ae_title: str | None = None
    #: More than one: connections refused together (``max_pending_connections``).
    connections: int = 1


TransportEventHandler = Callable[[TransportEvent], None]


def send_quietly(sock: socket.socket | None, data: bytes) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(ABORT_SEND_TIMEOUT)
        sock.sendall(data)


def close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def raise_if_closed_silently(sock: socket.socket, deadline: Deadline) -> None:
    """Wait (until ``deadline``) for the connection's first byte without taking it;
    ClosedSilentlyError if the peer closes or resets the connection first.

    Past the deadline it returns: the read that follows reports the ARTIM expiry.
    """
    try:
        sock.settimeout(deadline.remaining())
        first = sock.recv(1, socket.MSG_PEEK)
    except ConnectionResetError:
        raise ClosedSilentlyError() from None
    except OSError:  # TimeoutError included: the next read reports it
        return
    if not first:
        raise ClosedSilentlyError()


def host_and_port(address: Any) -> tuple[str, int]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return str(address), 0


@dataclass(frozen=True)
class ReceiveLimits:
    """What a connection may take: time, PDU lengths and memory (config.Settings names)."""

    #: ARTIM before the association: TCP accept to a complete A-ASSOCIATE-RQ, TLS included.
    association_request_timeout: float
    #: An established association: each PDU must arrive in full within this.
    idle_timeout: float
    #: The P-DATA-TF length the node announces (its Maximum Length) and accepts.
    max_pdata_length: int
    #: Bytes one connection may hold: the PDU being read plus the DIMSE message assembled.
    connection_budget: int
    #: Connections still waiting for their A-ASSOCIATE-RQ (TLS handshake included).
    max_pending_connections: int
    max_association_pdu_length: int = ASSOCIATION_PDU_CEILING

    def pdu_cap(self, pdu_type: int) -> int:
        if pdu_type == PduType.P_DATA_TF:
            return self.max_pdata_length
        return self.max_association_pdu_length


class ReceiveBudget:
    """Bytes held against a limit, thread-safe: the process's budget, or one connection's."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def take(self, count: int) -> bool:
        with self._lock:
            if self._in_use + count > self.limit:
                return False
            self._in_use += count
            return True

    def give(self, count: int) -> int:
        """Give back ``count`` bytes, never more than are held; returns how many were."""
        with self._lock:
            count = min(count, self._in_use)
            self._in_use -= count
            return count


class ConnectionAllowance:
    """One connection's reservations, against its own limit and the process's budget.

    The connection's thread reads the request, the association's threads the rest, and
    whichever ends it releases: never two at once in practice, each budget locked anyway.
    """

    def __init__(self, budget: ReceiveBudget, limit: int) -> None:
        self._budget = budget
        self._own = ReceiveBudget(limit)

    @property
    def held(self) -> int:
        return self._own.in_use

    def reserve(self, count: int) -> None:
        if not self._own.take(count):
            raise BudgetExceededError(
                f"the connection would hold {self.held + count} bytes, over "
                f"receive_connection_budget_bytes ({self._own.limit})"
            )
        if not self._budget.take(count):
            self._own.give(count)
            raise BudgetExceededError(f"receive_budget_bytes ({self._budget.limit}) exhausted")

    def release(self, count: int) -> None:
        self._budget.give(self._own.give(count))

    def release_all(self) -> None:
        self.release(self.held)


class Deadline:
    """A point in time a read must finish by; :meth:`remaining` raises once it passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"deadline of {self.seconds} s passed")
        return left


def receive(
    sock: socket.socket,
    length: int,
    deadline: Deadline,
    allowance: ConnectionAllowance,
    step: int | None = None,
) -> bytearray:
    """``length`` bytes from ``sock`` before ``deadline``; fewer only when the peer closed.

    The buffer starts at :data:`FIRST_CHUNK` and doubles only when the bytes received
    fill it, each growth reserved from ``allowance`` first (released again on return:
    the caller accounts for what it keeps). ``step`` caps each ``recv_into`` call.
    Raises TimeoutError past the deadline, BudgetExceededError, or the socket's OSError.
    """
    buffer = bytearray()
    received = 0
    try:
        while received < length:
            if received == len(buffer):
                grow = min(length - received, max(FIRST_CHUNK, received))
                allowance.reserve(grow)
                buffer.extend(bytes(grow))
            sock.settimeout(deadline.remaining())
            wanted = len(buffer) - received if step is None else min(step, len(buffer) - received)
            with memoryview(buffer) as view:
                count = sock.recv_into(view[received:], wanted)
            if count == 0:
                break
            received += count
    finally:
        allowance.release(len(buffer))
    del buffer[received:]
    return buffer


@dataclass(frozen=True)
class PduHeader:
    pdu_type: int
    length: int

    @classmethod
    def parse(cls, raw: bytes | bytearray) -> PduHeader:
        pdu_type, _, length = struct.unpack(">BBL", raw)
        return cls(pdu_type, length)

    @property
    def name(self) -> str:
        try:
            return PduType(self.pdu_type).name.replace("_", "-")
        except ValueError:
            return f"unknown PDU type 0x{self.pdu_type:02X}"

    def check_length(self, limits: ReceiveLimits) -> None:
        """Refuse (invalid-PDU-parameter value) a declared length over the type's cap."""
        cap = limits.pdu_cap(self.pdu_type)
        if self.length > cap:
            raise TransportRefusedError(
                f"{self.name} declares {self.length} bytes, over the {cap}-byte maximum",
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )


def read_association_request(
    sock: socket.socket,
    limits: ReceiveLimits,
    allowance: ConnectionAllowance,
    deadline: Deadline,
) -> bytearray:
    """The connection's first PDU, which must be a whole A-ASSOCIATE-RQ before ``deadline``.

    Refusals follow PS3.8's state 2 (awaiting the request): an A-ABORT PDU from the peer
    or a closed connection end it silently; an unrecognised PDU is aborted with
    unrecognised-PDU, any other PDU with unexpected-PDU, an over-long one with
    invalid-PDU-parameter value; ARTIM expiry closes the connection.
    """
    try:
        raw = receive(sock, PDU_HEADER_LENGTH, deadline, allowance)
        if len(raw) < PDU_HEADER_LENGTH:
            raise TransportRefusedError("connection closed before an A-ASSOCIATE-RQ")
        header = PduHeader.parse(raw)
        _check_first_pdu(header)
        header.check_length(limits)
        body = receive(sock, header.length, deadline, allowance)
    except TimeoutError:
        raise TransportRefusedError(
            "no complete A-ASSOCIATE-RQ within association_request_timeout_seconds "
            f"({limits.association_request_timeout:g} s)"
        ) from None
    except BudgetExceededError as error:
        raise TransportRefusedError(str(error), AbortReason.NOT_SPECIFIED) from None
    if len(body) < header.length:
        raise TransportRefusedError("connection closed before the A-ASSOCIATE-RQ was complete")
    return raw + body


def _check_first_pdu(header: PduHeader) -> None:
    if header.pdu_type == PduType.A_ASSOCIATE_RQ:
        return
    if header.pdu_type == PduType.A_ABORT:
        raise TransportRefusedError("aborted by the peer before an A-ASSOCIATE-RQ")
    known = header.pdu_type in _KNOWN_PDU_TYPES
    raise TransportRefusedError(
        f"first PDU is {header.name}, not an A-ASSOCIATE-RQ",
        AbortReason.UNEXPECTED_PDU if known else AbortReason.UNRECOGNISED_PDU,
    )


class PduReader:
    """One association's PDU reads, as pynetdicom makes them: ``read(6)`` for a header,
    then ``read(length)`` for its body (pinned by tests/dicom_node/test_pynetdicom_contract.py).

    The A-ASSOCIATE-RQ read before the association existed is replayed first. Each later
    PDU must arrive in full within ``limits.idle_timeout`` of its first byte; P-DATA-TF
    payloads are counted against the connection's allowance until the fragment that ends
    their DIMSE command or data set, so a data set that never ends cannot grow unbounded.
    """

    def __init__(
        self,
        limits: ReceiveLimits,
        allowance: ConnectionAllowance,
        first_pdu: bytearray,
        bulk_reads: bool = True,
    ) -> None:
        self._limits = limits
        self._allowance = allowance
        self._replay = first_pdu
        self._step = None if bulk_reads else STOCK_READ_STEP
        self._body: tuple[PduHeader, Deadline] | None = None
        self._message_bytes = 0
        self._reading = False

    @property
    def has_replay(self) -> bool:
        return bool(self._replay)

    @property
    def reading(self) -> bool:
        """Whether a PDU is being read off the network (its header read, or a read under
        way): its deadline is running."""
        return self._reading or self._body is not None

    def read(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        if self._replay:
            chunk = self._replay[:nr_bytes]
            del self._replay[:nr_bytes]
            return chunk
        self._reading = True
        try:
            if self._body is None:
                return self._read_header(sock, nr_bytes)
            return self._read_body(sock, nr_bytes)
        finally:
            self._reading = False
            sock.settimeout(self._limits.idle_timeout)  # sends must not block for ever

    def _read_header(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        if nr_bytes != PDU_HEADER_LENGTH:
            raise RuntimeError(
                f"pynetdicom asked for {nr_bytes} bytes where a PDU header was expected: "
                "see tests/dicom_node/test_pynetdicom_contract.py"
            )
        deadline = Deadline(self._limits.idle_timeout)
        raw = self._guarded(lambda: receive(sock, nr_bytes, deadline, self._allowance))
        if len(raw) == PDU_HEADER_LENGTH:
            header = PduHeader.parse(raw)
            if header.pdu_type in _KNOWN_PDU_TYPES:
                header.check_length(self._limits)
                self._body = header, deadline
            # an unknown type: pynetdicom aborts (unrecognised PDU) without reading on
        return raw

    def _read_body(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        assert self._body is not None
        header, deadline = self._body
        self._body = None
        if nr_bytes != header.length:
            raise RuntimeError(
                f"pynetdicom asked for {nr_bytes} bytes of a {header.length}-byte PDU: "
                "see tests/dicom_node/test_pynetdicom_contract.py"
            )
        body = self._guarded(lambda: receive(sock, nr_bytes, deadline, self._allowance, self._step))
        if header.pdu_type == PduType.P_DATA_TF and len(body) == nr_bytes:
            self._guarded(lambda: self._count_message_bytes(body))
        return body

    def _guarded(self, read: Callable[[], _T]) -> _T:
        try:
            return read()
        except TimeoutError:
            raise TransportRefusedError(
                "PDU not received in full within idle_timeout_seconds "
                f"({self._limits.idle_timeout:g} s)",
                AbortReason.NOT_SPECIFIED,
            ) from None
        except BudgetExceededError as error:
            raise TransportRefusedError(str(error), AbortReason.NOT_SPECIFIED) from None

    def _count_message_bytes(self, body: bytearray) -> None:
        """Hold each PDV's fragment until the one that ends its command or data set.

        A malformed item list stops the count: pynetdicom refuses the PDU itself.
        """
        offset = 0
        while offset + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, offset)
            if item_length < 2 or offset + 4 + item_length > len(body):
                return
            control = body[offset + 5]
            self._allowance.reserve(item_length - 2)
            self._message_bytes += item_length - 2
            if control & 0x02:  # the last fragment of a command or a data set
                self._allowance.release(self._message_bytes)
                self._message_bytes = 0
            offset += 4 + item_length

    def release(self) -> None:
        self._allowance.release_all()
        self._message_bytes = 0


class PendingConnections:
    """Connections admitted that have not yet delivered their A-ASSOCIATE-RQ.

    Past ``limit`` a new connection is closed at once; those are counted and reported
    together (one audit event, not one database write per connection of a flood).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._refused = 0
        self._last_refused: tuple[str, int] | None = None
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def admit(self, address: tuple[str, int]) -> bool:
        with self._lock:
            if self._count >= self.limit:
                self._refused += 1
                self._last_refused = address
                return False
            self._count += 1
            return True

    def settle(self) -> None:
        """The admitted connection's request arrived, or it was refused."""
        with self._lock:
            self._count -= 1

    def take_refused(self) -> tuple[int, tuple[str, int] | None]:
        """How many were refused since the last call, and the last one's address."""
        with self._lock:
            refused, address = self._refused, self._last_refused
            self._refused, self._last_refused = 0, None
            return refused, address
