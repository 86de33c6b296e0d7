"""The pynetdicom internals dicom_node.receive.fastpath relies on, pinned.

Each test states one assumption of fastpath.py about pynetdicom's private or undocumented
behaviour and checks it against the installed release, by behaviour where it can. When
pynetdicom is upgraded and a test here fails, re-read the named pynetdicom code, adapt
fastpath.py (or drop the override if docs/upstream-pynetdicom.md's hooks were accepted),
then raise ``WRITTEN_FOR_PYNETDICOM``.
"""

from __future__ import annotations

import inspect
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from dicom_node.receive.fastpath import WRITTEN_FOR_PYNETDICOM, GuardedSocket

RECHECK = (
    "dicom_node/receive/fastpath.py relies on this pynetdicom internal; re-check it "
    "against pynetdicom {version} before raising WRITTEN_FOR_PYNETDICOM"
)


def _recheck() -> str:
    return RECHECK.format(version=pynetdicom.__version__)


def test_the_installed_pynetdicom_is_the_one_the_fast_path_was_written_for() -> None:
    assert pynetdicom.__version__ == WRITTEN_FOR_PYNETDICOM, (
        f"pynetdicom {pynetdicom.__version__} is installed; fastpath.py was written for "
        f"{WRITTEN_FOR_PYNETDICOM}. Re-check every test in this file's assumption in the new "
        "release (RequestHandler._create_association, DULServiceProvider._read_pdu_data, "
        "AssociationSocket's state and recv/ready/close, AE._servers and "
        "AssociationServer.shutdown, ThreadedAssociationServer's socketserver methods), "
        "then raise WRITTEN_FOR_PYNETDICOM."
    )


@pytest.fixture
def server() -> Iterator[ThreadedAssociationServer]:
    ae = AE()
    ae.add_supported_context(Verification)
    server = ae.make_server(("127.0.0.1", 0), server_class=ThreadedAssociationServer)
    yield server
    server.server_close()


def test_a_server_registered_in_ae_servers_is_removed_by_its_shutdown() -> None:
    ae = AE()
    ae.add_supported_context(Verification)
    assert isinstance(ae._servers, list), _recheck()
    server = ae.make_server(("127.0.0.1", 0), server_class=ThreadedAssociationServer)
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.shutdown()
    assert server not in ae._servers, _recheck()


def test_make_server_passes_extra_keywords_to_the_server_class() -> None:
    received: dict[str, object] = {}

    class Recording(ThreadedAssociationServer):
        def __init__(self, *args: object, marker: object, **kwargs: object) -> None:
            received["marker"] = marker
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    ae = AE()
    ae.add_supported_context(Verification)
    server = ae.make_server(
        ("127.0.0.1", 0), server_class=Recording, request_handler=RequestHandler, marker=1
    )
    server.server_close()
    assert received == {"marker": 1}, _recheck()


def _handler(
    server: ThreadedAssociationServer, sock: socket.socket, cls: type = RequestHandler
) -> RequestHandler:
    """A request handler as socketserver builds one, without running handle()."""
    handler = cls.__new__(cls)
    handler.request, handler.client_address, handler.server = sock, ("127.0.0.1", 1), server
    return handler


def test_create_association_builds_one_association_socket_around_the_request(
    server: ThreadedAssociationServer,
) -> None:
    assert list(inspect.signature(RequestHandler._create_association).parameters) == ["self"]
    ours, _theirs = socket.socketpair()
    association = _handler(server, ours)._create_association()
    sock = association.dul.socket
    assert type(sock) is AssociationSocket and sock.socket is ours, _recheck()
    # Exactly one transport-connection indication: why the class is swapped, not replaced.
    assert list(association.dul.event_queue.queue) == ["Evt5"], _recheck()
    assert association.is_acceptor and association.acceptor.maximum_length is not None


def test_handle_builds_the_association_with_create_association_and_starts_it(
    server: ThreadedAssociationServer,
) -> None:
    built: list[Association] = []

    class Recording(RequestHandler):
        def _create_association(self) -> Association:
            built.append(super()._create_association())
            return built[-1]

    server.ae.acse_timeout = 0.5  # how long it then waits for a request
    ours, theirs = socket.socketpair()
    _handler(server, ours, Recording).handle()
    (association,) = built
    assert association.is_alive() or association.dul.is_alive(), _recheck()
    theirs.close()  # the association ends: its peer closed before a request
    association.join(timeout=30)
    assert "setup" not in vars(RequestHandler), _recheck()  # fastpath's setup() is its own


def test_association_socket_class_can_be_swapped_for_the_guarded_one(
    server: ThreadedAssociationServer,
) -> None:
    """GuardedSocket adds no __init__ state and no slots: changing the class of the socket
    pynetdicom built is sound while AssociationSocket has no __slots__ either."""
    assert "__slots__" not in vars(AssociationSocket), _recheck()
    assert not set(vars(GuardedSocket)) & {"__init__", "__slots__"}
    assert isinstance(inspect.getattr_static(AssociationSocket, "ready"), property), _recheck()
    assert list(inspect.signature(AssociationSocket.recv).parameters) == ["self", "nr_bytes"]
    assert list(inspect.signature(AssociationSocket.close).parameters) == ["self"]
    ours, _theirs = socket.socketpair()
    sock = _handler(server, ours)._create_association().dul.socket
    sock.__class__ = GuardedSocket
    assert sock.socket is ours and sock.select_timeout == 0.5, _recheck()


class _Recording(AssociationSocket):
    """Records how the DUL reads: the calls fastpath's PduReader is written for."""

    calls: list[int]
    refuse: bool = False

    def recv(self, nr_bytes: int) -> bytearray:
        self.calls.append(nr_bytes)
        if self.refuse:
            raise ConnectionAbortedError("refused")
        return super().recv(nr_bytes)


def _recording_dul(
    server: ThreadedAssociationServer,
) -> tuple[DULServiceProvider, _Recording, socket.socket]:
    ours, theirs = socket.socketpair()
    association = _handler(server, ours)._create_association()
    sock = association.dul.socket
    sock.__class__ = _Recording
    sock.calls = []
    association.dul.event_queue.queue.clear()  # the Evt5 of the connection
    return association.dul, sock, theirs


def test_the_dul_reads_a_pdu_as_a_6_byte_header_then_its_length(
    server: ThreadedAssociationServer,
) -> None:
    dul, sock, theirs = _recording_dul(server)
    theirs.sendall(bytes.fromhex("05 00 00000004 00000000"))  # A-RELEASE-RQ
    dul._read_pdu_data()
    assert sock.calls == [6, 4], _recheck()
    assert list(dul.event_queue.queue) == ["Evt12"], _recheck()


def test_the_dul_reads_only_when_the_socket_is_ready(
    server: ThreadedAssociationServer,
) -> None:
    dul, sock, _theirs = _recording_dul(server)
    assert sock.ready is False
    assert dul._is_transport_event() is False and sock.calls == [], _recheck()


def test_an_os_error_from_recv_is_a_closed_transport(
    server: ThreadedAssociationServer,
) -> None:
    dul, sock, theirs = _recording_dul(server)
    sock.refuse = True
    theirs.sendall(bytes.fromhex("04 00 ffffffff"))
    dul._read_pdu_data()
    assert sock.calls == [6] and list(dul.event_queue.queue) == ["Evt17"], _recheck()


def test_threaded_server_is_socketservers_threading_mix_in() -> None:
    """fastpath overrides get_request, process_request, process_request_thread,
    server_bind and server_activate, and sets daemon_threads / block_on_close."""
    assert ThreadedAssociationServer.__mro__[1:3] == (
        socketserver.ThreadingMixIn,
        AssociationServer,
    ), _recheck()
    for name in ("get_request", "process_request_thread"):
        parameters = list(inspect.signature(getattr(ThreadedAssociationServer, name)).parameters)
        assert parameters[0] == "self", _recheck()
    assert list(inspect.signature(AssociationServer.process_request).parameters) == [
        "self",
        "request",
        "client_address",
    ], _recheck()
    assert {"daemon_threads", "block_on_close"} <= set(dir(ThreadedAssociationServer))


def test_idle_timer_and_timeouts_are_where_scp_reads_them() -> None:
    association = Association(AE(), "acceptor")
    association.network_timeout = 7
    association.acse_timeout = 3
    assert association.dul._idle_timer.timeout == 7, _recheck()
    assert association.dul.artim_timer.timeout == 3, _recheck()
    assert association.dul.idle_timer_expired() is False


#: pynetdicom internals: modules, and attributes a module may reach them by.
_INTERNAL_MODULES = re.compile(r"^\s*(from|import) pynetdicom\.(transport|dul|fsm|_\w+)\b", re.M)
_INTERNAL_ATTRIBUTES = re.compile(
    r"(?<!\bself)(?<!\bcls)\.(_servers|_create_association|_read_pdu_data"
    r"|_is_transport_event|_idle_timer|_handlers|_kill|_dul_ready|__class__\s*=)"
)


def test_no_product_module_but_fastpath_reaches_pynetdicom_internals() -> None:
    """import-linter sees pynetdicom only as one package: this check keeps its internals
    (imports of its transport, DUL or FSM modules, the private attributes fastpath uses)
    out of every product module but fastpath.py."""
    root = Path(__file__).resolve().parents[2]
    fastpath = root / "dicom_node" / "receive" / "fastpath.py"
    offenders = []
    for package in ("config", "db", "models", "dicom_node", "flows"):
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            if path == fastpath:
                continue
            for match in (*_INTERNAL_MODULES.finditer(text), *_INTERNAL_ATTRIBUTES.finditer(text)):
                offenders.append(f"{path.relative_to(root)}: {match.group(0).strip()}")
    assert not offenders, "pynetdicom internals outside fastpath.py:\n" + "\n".join(offenders)
