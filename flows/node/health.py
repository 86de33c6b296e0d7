"""Checks of what the node needs, each one line: ``/readyz`` and ``fracture-triage check``.

Each check returns a :class:`CheckResult` and never raises: a failure is a result that
says what is wrong, without a password or patient data in it.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from config import AnyDestination, Destination, DicomWebDestination, Settings
from db.migrate import current_revision, head_revision
from dicom_node.delivery.dimse import associate
from dicom_node.tls import client_context
from flows.runtime import UnservableBundleError, refuse_unservable
from models.runtime.metadata import BundleMetadata


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


class CheckFailedError(RuntimeError):
    """A check found something wrong; its message says what (no exception name needed)."""


def run_check(name: str, check: Callable[[], str]) -> CheckResult:
    """``check`` returns what it found, or raises: the exception's message is the detail."""
    try:
        return CheckResult(name, True, check())
    except Exception as error:
        return CheckResult(name, False, error_text(error))


def error_text(error: BaseException) -> str:
    """One line naming the error: its type and its first line (a driver's error is long)."""
    if isinstance(error, CheckFailedError):
        return str(error)
    if isinstance(error, SQLAlchemyError) and getattr(error, "orig", None) is not None:
        error = error.orig  # type: ignore[assignment]  # the driver's own, shorter message
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {first}" if first else name


def check_servable(metadata: BundleMetadata, bundle_dir: Path) -> None:
    """:func:`flows.runtime.refuse_unservable` as a failed check."""
    try:
        refuse_unservable(metadata, bundle_dir)
    except UnservableBundleError as error:
        raise CheckFailedError(str(error)) from None


def check_database(engine: Engine) -> str:
    """Reachable, and at the revision the code expects (migrations applied)."""
    where = engine.url.render_as_string(hide_password=True)
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise CheckFailedError(
            f"{where} is at revision {current or 'none'}, the code expects {head}: "
            "run fracture-triage db upgrade"
        )
    return f"{where} reachable, at revision {head}"


def check_writable_folder(folder: Path, min_free_bytes: int = 0) -> str:
    """A file can be written and synced in ``folder``, and it has ``min_free_bytes`` free."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-", delete=True) as probe:
        probe.write(b"ok")
        probe.flush()
        os.fsync(probe.fileno())
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise CheckFailedError(
            f"{folder} has {free} bytes free, below min_free_disk_bytes ({min_free_bytes})"
        )
    return f"{folder} writable, {free // 1024**2} MiB free"


def check_destination(destination: AnyDestination, settings: Settings, timeout: float) -> str:
    """DIMSE: a C-ECHO (over TLS when the destination says so); DICOMweb and HL7: the
    peer accepts a TCP connection (TLS handshake included for https)."""
    if isinstance(destination, Destination):
        return _echo(destination, settings, timeout)
    if isinstance(destination, DicomWebDestination):
        url = urlsplit(destination.url)
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        context = client_context(None, destination.ca_file) if secure else None
        _connect(url.hostname or "", port, timeout, context)
        return f"{destination.url} accepts connections"
    _connect(destination.host, destination.port, timeout, None)
    return f"MLLP {destination.host}:{destination.port} accepts connections"


def _echo(destination: Destination, settings: Settings, timeout: float) -> str:
    tls = client_context(settings.tls) if destination.tls else None
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    verification = [(str(Verification), [ImplicitVRLittleEndian])]
    assoc = associate(destination, settings.ae_title, verification, timeout=timeout, tls=tls)
    if not assoc.is_established:
        what = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise CheckFailedError(f"association with {where} {what}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    if code != 0:
        answer = "nothing" if code is None else f"0x{code:04X}"
        raise CheckFailedError(f"C-ECHO to {where} answered {answer}")
    return f"C-ECHO to {where} succeeded"


def _connect(host: str, port: int, timeout: float, context: ssl.SSLContext | None) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if context is not None:
            with context.wrap_socket(sock, server_hostname=host):
                pass
