"""The node's start-up checks: it runs whole or refuses to start, with one line saying why.

A node without a loadable model, a reachable and migrated database, a writable store
or a working orchestration would accept studies that then wait for ever; each check
here raises :class:`NodeStartError` instead, and ``fracture-triage serve`` prints its
message and exits non-zero.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile

from sqlalchemy.exc import SQLAlchemyError

from db.migrate import current_revision, head_revision, upgrade
from flows.runtime import Runtime
from models.runtime.metadata import load_metadata

logger = logging.getLogger(__name__)


class NodeStartError(RuntimeError):
    """The node cannot start; the message is one line naming the problem."""


def check_database(runtime: Runtime) -> None:
    """Reachable, and at the head revision (migrated first where the node migrates itself)."""
    settings = runtime.settings
    try:
        if settings.migrates_at_start:
            upgrade(runtime.engine)
        revision = current_revision(runtime.engine)
    except SQLAlchemyError as error:
        raise NodeStartError(
            f"the database cannot be reached or migrated ({type(error).__name__}); "
            "check database_url and that the server runs"
        ) from None
    if revision != head_revision():
        raise NodeStartError(
            f"the database is at revision {revision or 'none'}, the node needs "
            f"{head_revision()}: run `fracture-triage db upgrade` as the database's owner"
        )


def check_folders(runtime: Runtime) -> None:
    """The store, outputs and work folders exist (created) and take a file; disk not full."""
    settings = runtime.settings
    for name, folder in (
        ("store_dir", settings.store_dir),
        ("output_dir", settings.output_dir),
        ("work folder", runtime.work_dir),
    ):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".start-check-"):
                pass
        except OSError as error:
            raise NodeStartError(
                f"{name} {str(folder)!r} is not writable ({os.strerror(error.errno or 0)})"
            ) from None
    free = shutil.disk_usage(settings.store_dir).free
    if free < settings.min_free_disk_bytes:
        raise NodeStartError(
            f"store_dir {str(settings.store_dir)!r} has {free} bytes free, less than "
            f"min_free_disk_bytes ({settings.min_free_disk_bytes})"
        )


def load_model(runtime: Runtime) -> None:
    """Load the bundle now: a missing or broken one stops the node, not a study later.

    In server mode the workers run the model; the node checks its bundle's metadata only.
    """
    try:
        if runtime.settings.prefect_api_url:
            load_metadata(runtime.settings.model_bundle_dir)
        else:
            runtime.model()
    except Exception as error:  # whatever a broken bundle raises (torch's unpickler too)
        raise NodeStartError(
            f"model bundle {str(runtime.settings.model_bundle_dir)!r} cannot be loaded: "
            f"{_first_line(error)}"
        ) from None


def start_orchestration(runtime: Runtime) -> None:
    """Prefect answers before the first study needs it.

    Embedded, this starts Prefect's API server now (so the first study does not wait
    for it) and stops the node if it cannot run; in server mode a server that is down
    is logged and the node starts anyway: studies wait, audited, and are handed on
    when it is back.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = runtime.settings.prefect_api_url
    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: url} if url else {}),
            get_client(sync_client=True) as client,
        ):
            problem = client.api_healthcheck()
    except Exception as error:
        problem = error
    if problem is None:
        return
    message = f"Prefect does not answer ({type(problem).__name__})"
    if url:
        logger.error("%s at %s: studies wait until it is back", message, url)
        return
    raise NodeStartError(f"{message}; PREFECT_HOME is {os.environ.get('PREFECT_HOME')!r}")


def port_taken(error: OSError, address: tuple[str, int]) -> NodeStartError:
    """The error for a port another program already listens on."""
    if error.errno == errno.EADDRINUSE:
        return NodeStartError(f"port {address[1]} on {address[0]} is taken by another program")
    return NodeStartError(f"cannot listen on {address[0]}:{address[1]} ({error.strerror})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


__all__ = [
    "NodeStartError",
    "check_database",
    "check_folders",
    "load_model",
    "port_taken",
    "start_orchestration",
]
