"""Embedded Prefect defaults: ephemeral API under ./var, no analytics, no persisted results.

Each default is only set when the variable is absent, so a site's own Prefect
profile or environment (a Prefect server, a different home) always wins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PREFECT_HOME = Path("var/prefect")


def prefect_home(preferred: Path = DEFAULT_PREFECT_HOME) -> Path:
    """An owner-only folder for Prefect's embedded database that exists and is writable.

    ``var/prefect`` under the working directory, created if missing (a node started from
    a directory without ``var/`` must still run its flows); where that cannot be written
    (a read-only working directory), a folder under the user's state directory.
    """
    fallback = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    for candidate in (preferred.resolve(), fallback / "fracture-triage" / "prefect"):
        try:
            candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise OSError(f"no writable folder for Prefect's home ({preferred.resolve()}, {fallback})")


def apply_prefect_defaults(home: Path | None = None) -> None:
    # Unusable: the node's start-up check names the problem (flows.node.startup).
    if "PREFECT_HOME" not in os.environ:
        with contextlib.suppress(OSError):
            os.environ["PREFECT_HOME"] = str(prefect_home(home or DEFAULT_PREFECT_HOME))
    defaults = {
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
