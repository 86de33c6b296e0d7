"""One optional progress bar for the long offline commands (training, evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import Progress


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of ``total`` steps when ``enabled``; yields ``advance(steps)``.

    Disabled, ``advance`` does nothing, so callers report progress without checking.
    """
    if not enabled:
        yield lambda _steps: None
        return
    with Progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda steps: progress.update(task, advance=steps)
