"""The shared background loop: rounds, waking early, surviving a failed round, stopping."""

from __future__ import annotations

import threading

import pytest

from dicom_node.periodic import PeriodicWorker

WAIT = 30.0  # generous: the machine may be loaded


class Rounds(PeriodicWorker):
    """Counts rounds; the first one fails, as a database that is down would."""

    def __init__(self, interval: float, *, first_round_at_start: bool = True) -> None:
        super().__init__("test-rounds", interval, first_round_at_start=first_round_at_start)
        self.count = 0
        self.second_round = threading.Event()

    def run_once(self) -> None:
        self.count += 1
        if self.count == 1:
            raise RuntimeError("first round fails")
        self.second_round.set()


def test_a_failed_round_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    worker = Rounds(interval=3600.0)  # only wake() can bring the second round
    worker.start()
    try:
        worker.wake()
        assert worker.second_round.wait(WAIT)
    finally:
        worker.stop()
    assert "test-rounds: round failed" in caplog.text


def test_without_a_first_round_at_start_nothing_runs_before_wake() -> None:
    worker = Rounds(interval=3600.0, first_round_at_start=False)
    worker.start()
    worker.stop()
    assert worker.count == 0


def test_stop_ends_a_long_wait_and_the_worker_can_start_again() -> None:
    worker = Rounds(interval=3600.0)
    worker.start()
    with pytest.raises(RuntimeError, match="already running"):
        worker.start()
    worker.stop()  # returns at once: the wait is woken
    worker.start()
    worker.stop()


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval 0"):
        Rounds(interval=0)
