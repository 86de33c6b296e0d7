"""More receiving processes behind the SCP's port, so associations are received on several cores.

pynetdicom reads PDUs in Python: every association of one process shares one
interpreter. With ``scp_processes = N`` the node's SCP accepts every connection on its
port and hands them in turn to itself and N - 1 child processes, each running its own
SCP (:func:`dicom_node.receive.scp.serve_handed_connections`: its own engine, the same
store and database). A connection crosses as a file descriptor over a Unix socket pair
(SCM_RIGHTS), before any byte of it is read; a child that cannot take one (dead, being
restarted) leaves it to the node. Round robin rather than the kernel's SO_REUSEPORT
hash, which put 3 of 4 concurrent associations on one process half the time. Each
process stores, records and audits exactly as the single one does; the audit chain and
the study rows are serialised in the database, not in memory. ``max_associations`` (and
every receive limit) applies per process.

A child that dies is started again; a child whose parent dies is killed by the kernel
(``PR_SET_PDEATHSIG``), so a crashed node never leaves receivers holding its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import signal
import socket
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

from config import Settings

logger = logging.getLogger(__name__)

#: Seconds a child has to bind the port before start() gives up on it.
CHILD_START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def settings_values(settings: Settings) -> dict[str, Any]:
    """The settings as plain field values: they cross to a child process as they are.

    Not re-validated there: a password read from a file stays read, nothing is looked
    up in the child's environment again.
    """
    return {name: getattr(settings, name) for name in type(settings).model_fields}


def _die_with_parent() -> None:
    # Linux signals the child when the *thread* that started it ends: children are started
    # by the thread that starts the SCP and by the watchdog, both living until stop().
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


#: A receiver process's entry point: ``(settings values, index, ready, channel, *shared)``.
#: It calls :func:`become_receiver_process`, serves the connections handed on ``channel``,
#: sets ``ready`` once it does, and returns when the stop event is set.
ReceiverMain = Callable[..., None]


class SharedCounter:
    """A count the node and its receiver processes add to: one slot per process in
    shared memory, each process writing its own slot only (so no lock crosses processes,
    and no semaphore needs multiprocessing's resource tracker)."""

    def __init__(self, processes: int) -> None:
        self._slots = multiprocessing.get_context("spawn").RawArray("Q", processes)
        self._slot = 0  # the node's; a receiver process takes its index
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_slots": self._slots}  # crosses to a child as it starts; not the lock

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._slots = state["_slots"]
        self._slot = 0
        self._lock = threading.Lock()

    def use_slot(self, index: int) -> None:
        """Count into slot ``index`` from now on (a receiver process: its index)."""
        self._slot = index

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._slots[self._slot] += count

    @property
    def value(self) -> int:
        return sum(self._slots)


def become_receiver_process(index: int) -> threading.Event:
    """Set up a receiver process: the event SIGTERM sets, death with the parent, logging.

    SIGTERM, not a shared Event: a child killed while waiting on a multiprocessing
    Event can leave its lock held, and the next ``set()`` would hang the node's stop.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s receiver-{index} %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # datasets hold patient data
    return stop


class ReceiverProcesses:
    """``count`` child processes running ``main`` beside the parent's SCP (the SCP passes
    its own entry point: this module knows processes and channels, not the SCP)."""

    def __init__(
        self, settings: Settings, count: int, main: ReceiverMain, shared: tuple[Any, ...] = ()
    ) -> None:
        """``shared``: more arguments for ``main`` that cross to each child as it starts
        (shared memory, such as a :class:`SharedCounter`)."""
        if settings.port == 0:
            raise ValueError("receiver processes need the bound port, not 0")
        self._values = settings_values(settings)
        self._count = count
        self._main = main
        self._shared = shared
        self._context = multiprocessing.get_context("spawn")  # no threads or torch inherited
        self._children: dict[int, SpawnProcess] = {}
        self._channels: dict[int, socket.socket] = {}  # the node's ends, by child index
        self._turn = itertools.cycle(range(count + 1))  # 0: the node itself
        self._turn_lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        for index in range(1, self._count + 1):
            self._start_child(index)
        self._watchdog = threading.Thread(target=self._watch, name="receivers", daemon=True)
        self._watchdog.start()

    def _start_child(self, index: int) -> None:
        ready = self._context.Event()
        node_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        node_end.setblocking(False)  # a stuck child must never block the node's acceptor
        child = self._context.Process(
            target=self._main,
            args=(self._values, index, ready, child_end, *self._shared),
            name=f"receiver-{index}",
            daemon=True,
        )
        try:
            child.start()
        finally:
            child_end.close()  # the child has its own copy
        if not ready.wait(CHILD_START_TIMEOUT):
            child.kill()
            node_end.close()
            raise RuntimeError(f"receiver process {index} did not start listening")
        self._children[index] = child
        old = self._channels.get(index)
        self._channels[index] = node_end
        if old is not None:
            old.close()
        logger.info("receiver process %d (pid %d) listening", index, child.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for index, child in list(self._children.items()):
                if child.is_alive() or self._stopping.is_set():
                    continue
                logger.error(
                    "receiver process %d exited with %s; starting it again", index, child.exitcode
                )
                try:
                    self._start_child(index)
                except Exception:
                    logger.exception("receiver process %d could not be started again", index)

    def hand_off(self, connection: socket.socket) -> bool:
        """Give ``connection`` to the receiver whose turn it is; False: the node's turn, or
        that receiver cannot take it now (the node serves it then)."""
        with self._turn_lock:
            index = next(self._turn)
        channel = self._channels.get(index)
        if channel is None:
            return False
        try:
            socket.send_fds(channel, [b"c"], [connection.fileno()])
        except OSError as error:
            logger.warning(
                "receiver process %d cannot take a connection (%s); the node serves it",
                index,
                type(error).__name__,
            )
            return False
        return True

    @property
    def alive(self) -> int:
        """How many receiver processes are running now."""
        return sum(child.is_alive() for child in list(self._children.values()))

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children.values() if child.pid is not None]

    def stop(self) -> None:
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        for child in self._children.values():
            child.terminate()  # SIGTERM: the child stops its SCP and exits
        for child in self._children.values():
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)
        self._children.clear()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
