"""Errors that leave a task or a flow: the type travels, the message stays ours.

Prefect records a failed task's or flow's exception (its state message, the run logs it
ships to its API database). A library's message may quote a patient value, so what
leaves a task is a :class:`TriageError` naming only the exception's type and the step;
the original message is kept on the object, for our own records after scrubbing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class TriageError(RuntimeError):
    """A triage step failed. ``str()`` holds the step and the error's type only."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step} failed: {type(error).__name__}")
        self.step = step
        self.kind = type(error).__name__
        self.detail = error.detail if isinstance(error, TriageError) else str(error)


def shielded(step: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a step so that any exception leaves it as a :class:`TriageError`."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except TriageError:
                raise
            except Exception as error:
                raise TriageError(step, error) from None

        return run

    return decorate
