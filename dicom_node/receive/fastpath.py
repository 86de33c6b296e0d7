"""pynetdicom's association servers: bulk socket reads, one port served by several processes.

pynetdicom's ``AssociationSocket.recv`` reads a PDU 4,096 bytes per ``recv`` call in
a Python loop (2,600 calls and ``bytearray.extend`` copies for a 10 MB instance; pydicom/
pynetdicom#620, #684). :class:`BulkReceiveSocket` reads straight into one buffer of the
PDU's length, as many bytes per call as the kernel has.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

if TYPE_CHECKING:
    from pynetdicom.association import Association

logger = logging.getLogger(__name__)

#: Seconds a receiver waits between reads of a channel its node has closed.
CLOSED_CHANNEL_PAUSE = 0.5


class BulkReceiveSocket(AssociationSocket):
    """An :class:`AssociationSocket` whose ``recv`` fills one buffer with ``recv_into``."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` from the socket; fewer only when the peer closed it.

        The same contract as :meth:`AssociationSocket.recv` (blocking, errors raised,
        what was read returned if the connection breaks), without its 4 KiB steps.
        """
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        received = 0
        with memoryview(buffer) as view:
            while received < nr_bytes:
                count = self.socket.recv_into(view[received:], nr_bytes - received)
                if count == 0:
                    break
                received += count
        if received < nr_bytes:
            del buffer[received:]
        return buffer


class BulkReceiveRequestHandler(RequestHandler):
    """pynetdicom's request handler, its associations reading with :class:`BulkReceiveSocket`."""

    def _create_association(self) -> Association:
        association = super()._create_association()
        # pynetdicom builds the AssociationSocket in the method above and there is no hook
        # for its class; a second socket object would queue a second "transport
        # connection indication" (Evt5), so the one it built changes class instead. The
        # subclass adds no state: only recv differs.
        association.dul.socket.__class__ = BulkReceiveSocket
        return association


class _ReceivingServer(ThreadedAssociationServer):
    """Accepts TCP connections without TLS; TLS is added where the connection is served.

    pynetdicom wraps a connection in TLS as it accepts it; a TLS session cannot move to
    another process, so here the plain socket is handed on and wrapped by its server.
    """

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def serve_connection(self, connection: socket.socket, client_address: Any) -> None:
        """Serve ``connection`` here: TLS handshake if configured, then an association thread."""
        if self.ssl_context is not None:
            try:
                connection = self.ssl_context.wrap_socket(connection, server_side=True)
            except OSError as error:  # as pynetdicom: a failed handshake ends only that peer
                logger.warning("TLS handshake failed (%s)", type(error).__name__)
                connection.close()
                return
        super().process_request(connection, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.serve_connection(request, client_address)


class DispatchingAssociationServer(_ReceivingServer):
    """The node's port: connections are served here or handed to a receiver process.

    ``hand_off`` (set once the receivers run) takes an accepted connection and returns
    True when a receiver process now holds it; the turn goes round all processes, this
    one included, so concurrent associations spread evenly (the kernel's SO_REUSEPORT
    hash put 3 of 4 on one process half the time).
    """

    hand_off: Callable[[socket.socket], bool] | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.hand_off is not None and self.hand_off(request):
            request.close()  # only this process's descriptor: the receiver serves the peer
            return
        self.serve_connection(request, client_address)


class HandedConnectionServer(_ReceivingServer):
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
        connection = socket.socket(fileno=descriptors[0])
        return connection, connection.getpeername()
