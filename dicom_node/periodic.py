"""One background loop for the node's periodic jobs (completion, outbox, audit export, drift).

Each job subclasses :class:`PeriodicWorker` and says what one round does; the thread, the
wait between rounds, waking early, stopping and surviving a failed round live here once.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

logger = logging.getLogger(__name__)


class PeriodicWorker(ABC):
    """Runs :meth:`run_once` in a daemon thread every ``interval`` seconds until stopped.

    Parameters
    ----------
    name
        The thread's name, also used in log records.
    interval
        Seconds between the end of one round and the start of the next (> 0).
    first_round_at_start
        Run a round as soon as the thread starts, instead of after the first interval.
    stop_timeout
        Seconds :meth:`stop` waits for a round in progress to finish.

    A round that raises is logged with its traceback; the next round tries again, so a
    database or peer that is down for a while never ends the loop.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        *,
        first_round_at_start: bool = True,
        stop_timeout: float = 60.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: interval {interval!r} must be above 0 seconds")
        self.name = name
        self.interval = interval
        self._first_round_at_start = first_round_at_start
        self._stop_timeout = stop_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def run_once(self) -> object:
        """One round of the job; what it returns is ignored by the loop."""

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Start the next round now instead of at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._stop_timeout)
            self._thread = None

    def _loop(self) -> None:
        if not self._first_round_at_start:
            self._pause()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("%s: round failed; the next round tries again", self.name)
            self._pause()

    def _pause(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()
