"""pynetdicom's association server with the node's transport: the one module that relies
on pynetdicom's internals.

What it changes, and why: pynetdicom handshakes TLS in its accept loop (one silent peer
holds every other caller), sizes its receive buffer from the peer's declared PDU length
(6 bytes declaring 4 GiB allocate 4 GiB), reads a PDU 4,096 bytes per ``recv`` call in a
Python loop (pydicom/pynetdicom#620, #684) and cannot hand a connection to another
process. Here TLS and the A-ASSOCIATE-RQ are read in the connection's own thread within
ARTIM, and every PDU is read by :class:`~dicom_node.receive.wire.PduReader` (lengths
capped before allocating, buffers grown as bytes arrive, deadlines, byte budgets).

The internals used, each checked by ``tests/dicom_node/test_pynetdicom_contract.py``
against the pynetdicom version it was written for (docs/upstream-pynetdicom.md proposes
the hooks that would retire them):

- ``RequestHandler._create_association`` builds the association's ``AssociationSocket``
  with no hook for its class: the socket it built changes class to :class:`GuardedSocket`
  (a second socket object would queue a second transport-connection indication, Evt5).
- ``DULServiceProvider`` reads a PDU as ``socket.recv(6)`` then ``socket.recv(length)``,
  only after ``socket.ready``: the points :class:`GuardedSocket` overrides.
- ``AE._servers``: the list ``start_server`` registers a server in, which the server's
  ``shutdown()`` removes it from.
- ``ThreadedAssociationServer``'s socketserver methods (``get_request``,
  ``process_request``, ``process_request_thread``, ``server_bind``, ``server_activate``)
  are overridden to move TLS and the request off the accept loop and to serve
  connections handed over by another process.

The interface for :mod:`dicom_node.receive.scp` is :func:`listen`, :class:`Listener`,
:func:`reading_a_pdu` and :func:`ended_by_transport`; what the transport refused reaches
it as a :class:`~dicom_node.receive.wire.TransportEvent`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.receive.wire import (
    ClosedSilentlyError,
    ConnectionAllowance,
    Deadline,
    PduReader,
    PendingConnections,
    ReceiveBudget,
    ReceiveLimits,
    TransportEvent,
    TransportEventHandler,
    TransportEventKind,
    TransportRefusedError,
    abort_pdu,
    close_quietly,
    host_and_port,
    raise_if_closed_silently,
    read_association_request,
    send_quietly,
)

logger = logging.getLogger(__name__)

#: The pynetdicom release these internals were read from and tested against; the
#: contract test fails on any other, naming what to re-check before raising it.
WRITTEN_FOR_PYNETDICOM = "3.0.4"

#: Seconds a receiver waits between reads of a channel its node has closed.
CLOSED_CHANNEL_PAUSE = 0.5


class GuardedSocket(AssociationSocket):
    """The association's socket, reading through its :class:`PduReader`.

    Made by changing the class of the socket pynetdicom built (see the module's notes),
    so it has no ``__init__`` of its own: :meth:`adopt` sets its state before the
    association starts. A refused read sends the A-ABORT the reader names, reports the
    event and raises ``ConnectionAbortedError``, which pynetdicom's DUL turns into a
    closed transport (Evt17): the association ends aborted.
    """

    _reader: PduReader
    _report: TransportEventHandler
    _refused: bool

    def adopt(self, reader: PduReader, report: TransportEventHandler) -> None:
        self._reader = reader
        self._report = report
        self._refused = False

    @property
    def ready(self) -> bool:
        return self._reader.has_replay or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        try:
            return self._reader.read(self.socket, nr_bytes)
        except TransportRefusedError as refused:
            if refused.abort is not None:
                send_quietly(self.socket, abort_pdu(refused.abort))
            self._refused = True
            if not self.assoc.is_aborted:  # else the idle timer's abort is audited already
                requestor = self.assoc.requestor
                self._report(
                    TransportEvent(
                        TransportEventKind.ABORTED,
                        refused.reason,
                        str(requestor.address),
                        int(requestor.port or 0),
                        requestor.ae_title or None,
                    )
                )
            raise ConnectionAbortedError(refused.reason) from None

    @property
    def refused(self) -> bool:
        """Whether this socket ended the association (and reported it)."""
        return self._refused

    @property
    def reading(self) -> bool:
        return self._reader.reading

    def close(self) -> None:
        self._reader.release()
        super().close()


def reading_a_pdu(association: Association) -> bool:
    """Whether ``association``'s transport is inside a PDU read (its header read)."""
    sock = association.dul.socket
    return isinstance(sock, GuardedSocket) and sock.reading


def ended_by_transport(association: Association) -> bool:
    """Whether the transport ended ``association`` (and reported why)."""
    sock = association.dul.socket
    return isinstance(sock, GuardedSocket) and sock.refused


@dataclass(frozen=True)
class _PreparedConnection:
    """A connection whose A-ASSOCIATE-RQ has arrived in full (TLS done where configured)."""

    socket: socket.socket
    reader: PduReader


class GuardedRequestHandler(RequestHandler):
    """Serves one prepared connection: builds the association, runs it to its end."""

    server: ReceivingServer
    prepared: _PreparedConnection
    association: Association | None

    def setup(self) -> None:
        self.prepared = cast(_PreparedConnection, self.request)
        self.request = self.prepared.socket
        self.association = None

    def _create_association(self) -> Association:
        association = super()._create_association()
        sock = association.dul.socket
        # No hook for the socket's class, and a second socket would queue a second Evt5:
        # the one pynetdicom built becomes a GuardedSocket (it adds no state of its own
        # before adopt()).
        assert sock is not None and type(sock) is AssociationSocket
        sock.__class__ = GuardedSocket
        cast(GuardedSocket, sock).adopt(self.prepared.reader, self.server.report)
        self.association = association
        return association

    def handle(self) -> None:
        super().handle()  # builds the association and starts its thread
        if self.association is not None:
            self.association.join()  # this connection's thread ends with its association


class ReceivingServer(ThreadedAssociationServer):
    """Accepts connections; each is served in its own thread, TLS handshake included.

    pynetdicom wraps a connection in TLS as it accepts it, in the accept loop: here the
    plain socket is accepted (it can also cross to another process) and the handshake
    and the A-ASSOCIATE-RQ are read in the connection's thread within ARTIM.
    """

    daemon_threads = True  # a connection's thread lives as long as its association
    block_on_close = False  # so stopping the server does not wait for them

    def __init__(
        self,
        *args: Any,
        limits: ReceiveLimits,
        budget: ReceiveBudget,
        on_event: TransportEventHandler,
        bulk_reads: bool = True,
        **kwargs: Any,
    ) -> None:
        self.limits = limits
        self.budget = budget
        self.bulk_reads = bulk_reads
        self._on_event = on_event
        self._pending = PendingConnections(limits.max_pending_connections)
        super().__init__(*args, **kwargs)

    def report(self, event: TransportEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("a transport event could not be reported")

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        connection, address = self.socket.accept()
        return without_nagle(connection), address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._pending.admit(host_and_port(client_address)):
            close_quietly(request)  # reported with the next connection that settles
            return
        try:
            super().process_request(request, client_address)  # ThreadingMixIn: a thread
        except BaseException:
            self._pending.settle()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        allowance = ConnectionAllowance(self.budget, self.limits.connection_budget)
        prepared = None
        try:
            prepared = self._prepare(request, client_address, allowance)
            if prepared is not None:
                self.finish_request(prepared, client_address)
        except Exception:
            logger.exception("serving a connection failed")
        finally:
            allowance.release_all()
            close_quietly(request if prepared is None else prepared.socket)

    def _prepare(
        self, request: socket.socket, client_address: Any, allowance: ConnectionAllowance
    ) -> _PreparedConnection | None:
        deadline = Deadline(self.limits.association_request_timeout)
        connection = request
        try:
            raise_if_closed_silently(request, deadline)
            connection = self._secure(request, deadline)
            first_pdu = read_association_request(connection, self.limits, allowance, deadline)
        except TransportRefusedError as refused:
            if refused.abort is not None:
                send_quietly(connection, abort_pdu(refused.abort))
            close_quietly(connection)
            host, port = host_and_port(client_address)
            kind = (
                TransportEventKind.PROBED
                if isinstance(refused, ClosedSilentlyError)
                else TransportEventKind.DROPPED
            )
            self.report(TransportEvent(kind, refused.reason, host, port))
            return None
        finally:
            self._pending.settle()
            self._report_refused_over_limit()
        reader = PduReader(self.limits, allowance, first_pdu, self.bulk_reads)
        return _PreparedConnection(connection, reader)

    def _secure(self, connection: socket.socket, deadline: Deadline) -> socket.socket:
        if self.ssl_context is None:
            return connection
        try:
            connection.settimeout(deadline.remaining())
            return self.ssl_context.wrap_socket(connection, server_side=True)
        except TimeoutError:
            raise TransportRefusedError(
                "TLS handshake not complete within association_request_timeout_seconds "
                f"({self.limits.association_request_timeout:g} s)"
            ) from None
        except (OSError, ValueError) as error:
            raise TransportRefusedError(f"TLS handshake failed ({type(error).__name__})") from None

    def _report_refused_over_limit(self) -> None:
        refused, address = self._pending.take_refused()
        if refused:
            host, port = address or ("", 0)
            reason = (
                f"closed at once: max_pending_connections ({self._pending.limit}) "
                "connections were already waiting for their A-ASSOCIATE-RQ"
            )
            self.report(
                TransportEvent(TransportEventKind.DROPPED, reason, host, port, None, refused)
            )


class DispatchingServer(ReceivingServer):
    """The node's port: connections are served here or handed to a receiver process.

    ``hand_off`` (set once the receivers run) takes an accepted connection and returns
    True when a receiver process now holds it.
    """

    hand_off: Callable[[socket.socket], bool] | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.hand_off is not None and self.hand_off(request):
            request.close()  # only this process's descriptor: the receiver serves the peer
            return
        super().process_request(request, client_address)


class HandedConnectionServer(ReceivingServer):
    """A receiver process's server: its "listening socket" is the channel from the node,
    on which connections arrive as descriptors (SCM_RIGHTS); nothing is bound."""

    def __init__(self, *args: Any, channel: socket.socket, **kwargs: Any) -> None:
        self._channel = channel
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()  # the unbound TCP socket socketserver made
        self.socket = self._channel

    def server_activate(self) -> None:
        pass

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        _, descriptors, _, _ = socket.recv_fds(self.socket, 1, 1)
        if not descriptors:
            # The node is gone (its receivers die with it, PR_SET_PDEATHSIG): no busy loop
            # on the closed channel meanwhile.
            time.sleep(CLOSED_CHANNEL_PAUSE)
            raise OSError("the node closed the connection channel")
        connection = without_nagle(socket.socket(fileno=descriptors[0]))
        return connection, connection.getpeername()


def without_nagle(connection: socket.socket) -> socket.socket:
    """The connection with Nagle's algorithm off: each C-STORE-RSP leaves at once instead
    of waiting for the peer's delayed ACK (about 40 ms an instance otherwise)."""
    # Not a TCP socket (a test's socketpair), or already closed: nothing to switch off.
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


class Listener:
    """A running association server: where it listens, its hand-off, and stop."""

    def __init__(self, server: ReceivingServer) -> None:
        self._server = server

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def hand_off_with(self, hand_off: Callable[[socket.socket], bool] | None) -> None:
        """Connections go to ``hand_off`` first (None: all served here from now on)."""
        if isinstance(self._server, DispatchingServer):
            self._server.hand_off = hand_off

    def stop(self) -> None:
        """Stop accepting and close the port; running associations end on their own."""
        self._server.shutdown()


def listen(
    ae: AE,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    ssl_context: Any,
    limits: ReceiveLimits,
    budget: ReceiveBudget,
    on_event: TransportEventHandler,
    bulk_reads: bool = True,
    channel: socket.socket | None = None,
) -> Listener:
    """Serve ``ae`` on ``address`` (or, with ``channel``, the connections handed over on it)
    in a background thread.

    ``bulk_reads=False`` reads in pynetdicom's own 4 KiB steps (benchmarks compare them).
    """
    server_class: type[ReceivingServer] = DispatchingServer
    extra: dict[str, Any] = {}
    if channel is not None:
        server_class, extra = HandedConnectionServer, {"channel": channel}
    server = ae.make_server(
        address,
        evt_handlers=evt_handlers,
        ssl_context=ssl_context,
        server_class=server_class,
        request_handler=GuardedRequestHandler,
        limits=limits,
        budget=budget,
        on_event=on_event,
        bulk_reads=bulk_reads,
        **extra,
    )
    ae._servers.append(server)  # as start_server does: the server's shutdown() removes it
    threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True).start()
    return Listener(server)
