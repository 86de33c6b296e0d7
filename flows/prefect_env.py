"""Embedded Prefect defaults: ephemeral API under ./var, no analytics, no persisted results.

Each default is only set when the variable is absent, so a site's own Prefect
profile or environment (a Prefect server, a different home) always wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PREFECT_HOME = Path("var/prefect")


def apply_prefect_defaults(home: Path | None = None) -> None:
    home = home or DEFAULT_PREFECT_HOME
    defaults = {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral API starts a server subprocess; on 2 busy cores that can take a while.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # Task results stay in memory: they hold UIDs and numbers only, and nothing that
        # touches patient data is written to Prefect's storage.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@contextmanager
def flow_run_settings(heartbeat: bool) -> Iterator[None]:
    """Prefect settings for flow runs started in this thread.

    The heartbeat lets a Prefect server spot crashed runs, but a synchronous run
    joins its heartbeat thread at the end (about 1 s); tests turn it off.
    """
    if heartbeat:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
