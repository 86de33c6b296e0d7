"""pynetdicom's association server with bulk socket reads and an optionally shared port.

pynetdicom's ``AssociationSocket.recv`` reads a PDU 4,096 bytes per ``recv`` call in
a Python loop (2,600 calls and ``bytearray.extend`` copies for a 10 MB instance; pydicom/
pynetdicom#620, #684). :class:`BulkReceiveSocket` reads straight into one buffer of the
PDU's length, as many bytes per call as the kernel has.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

if TYPE_CHECKING:
    from pynetdicom.association import Association


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


class SharedPortAssociationServer(ThreadedAssociationServer):
    """An association server whose port other receiving processes bind too (SO_REUSEPORT)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
