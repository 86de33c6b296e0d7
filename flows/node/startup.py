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

from sqlalchemy.exc import SQLAlchemyError

from db.migrate import upgrade
from dicom_node.store import make_private_dirs
from flows.node import health
from flows.runtime import Runtime, UnservableBundleError, refuse_unservable
from models.runtime.bundle import load_metadata

logger = logging.getLogger(__name__)


class NodeStartError(RuntimeError):
    """The node cannot start; the message is one line naming the problem."""


def check_database(runtime: Runtime) -> None:
    """Reachable, and at the head revision (migrated first where the node migrates itself)."""
    try:
        if runtime.settings.migrates_at_start:
            upgrade(runtime.engine)
        health.check_database(runtime.engine)
    except health.CheckFailedError as error:
        raise NodeStartError(str(error)) from None
    except SQLAlchemyError as error:
        raise NodeStartError(
            f"the database cannot be reached or migrated ({health.error_text(error)})"
        ) from None


def check_folders(runtime: Runtime) -> None:
    """The store, outputs and work folders exist (created) and take a file; disk not full."""
    settings = runtime.settings
    for name, folder, min_free in (
        ("store_dir", settings.store_dir, settings.min_free_disk_bytes),
        ("output_dir", settings.output_dir, 0),
        ("work folder", runtime.work_dir, 0),
    ):
        try:
            make_private_dirs(folder)
            health.check_writable_folder(folder, min_free)
        except health.CheckFailedError as error:
            raise NodeStartError(f"{name}: {error}") from None
        except OSError as error:
            raise NodeStartError(
                f"{name} {str(folder)!r} is not writable ({os.strerror(error.errno or 0)})"
            ) from None


def load_model(runtime: Runtime) -> None:
    """Load the bundle now: a missing or broken one stops the node, not a study later.

    In server mode the workers run the model; the node checks its bundle's metadata only.
    """
    bundle_dir = runtime.settings.model_bundle_dir
    try:
        if runtime.settings.prefect_api_url:  # the workers refuse it too (Runtime.model)
            refuse_unservable(load_metadata(bundle_dir), bundle_dir)
        else:
            runtime.model()
    except UnservableBundleError as error:
        raise NodeStartError(str(error)) from None
    except Exception as error:  # whatever a broken bundle raises (torch's unpickler too)
        raise NodeStartError(
            f"model bundle {str(bundle_dir)!r} cannot be loaded: {_first_line(error)}"
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
