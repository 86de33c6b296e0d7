"""Logging for every process (CLI, node, receiver processes): one record a line.

- ``log_format = "auto"``: Rich on a terminal; elsewhere (docker, systemd, a pipe)
  plain records, one line each, a traceback folded onto the same line, never wrapped.
- ``log_format = "json"``: one JSON object a line (python-json-logger), for a log
  collector.
- The node's own packages log at ``log_level``; libraries (highdicom, Prefect, httpx,
  ...) at ``third_party_log_level``. pynetdicom never below WARNING: its debug and info
  output holds whole data sets, patient data included.

Handlers are installed on the root logger *before* Prefect is imported: Prefect then
leaves the root alone (it only adds its console handler to a root without one), and its
own loggers take ``third_party_log_level`` through ``PREFECT_LOGGING_LEVEL``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.logging import RichHandler

from config.settings import Settings

#: The node's own packages: they log at ``log_level``.
OUR_PACKAGES = ("config", "db", "models", "dicom_node", "flows")
#: Libraries that must never log below WARNING (patient data in their detail).
QUIET_ALWAYS = ("pynetdicom",)

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
JSON_FIELDS = (
    "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d %(processName)s %(threadName)s"
)


class _UtcTimes(logging.Formatter):
    """ISO 8601 UTC timestamps with milliseconds: ``2026-11-30T10:00:00.123Z``."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class OneLineFormatter(_UtcTimes):
    """A record on one line: a multi-line message or traceback is joined with `` | ``."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(line for line in super().format(record).splitlines() if line.strip())


class JsonLinesFormatter(_UtcTimes, JsonFormatter):
    """One JSON object a line: time, level, logger, message, process (id and name: the
    node's ``MainProcess`` or ``receiver-N``), thread (and any ``extra`` fields); a
    traceback goes into ``exc_info`` as one string."""

    def __init__(self) -> None:
        JsonFormatter.__init__(
            self,
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it).

    Public name on purpose: Prefect, imported later, keeps a root handler it takes for the
    user's, and it takes a class whose name starts with ``_`` for its own.
    """

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _console_handler(log_format: str, stream: TextIO | None) -> logging.Handler:
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter())
    elif log_format == "auto" and (stream or sys.stderr).isatty():
        rich = RichHandler(console=Console(file=stream, stderr=stream is None), show_path=False)
        # A formatter of its own, so that Prefect sees a handler the user installed.
        rich.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return rich
    else:
        handler.setFormatter(OneLineFormatter())
    return handler


def configure_logging(
    settings: Settings,
    *,
    console_level: str | None = None,
    log_file: Path | None = None,
    stream: TextIO | None = None,
) -> None:
    """Install the process's log handlers from ``settings``.

    ``console_level``: a floor for the console only (``demo`` shows warnings there and
    writes everything else to ``log_file``, in plain lines or JSON as configured).
    """
    handlers = [_console_handler(settings.log_format, stream)]
    if console_level is not None:
        handlers[0].setLevel(console_level)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        json_lines = settings.log_format == "json"
        file_handler.setFormatter(JsonLinesFormatter() if json_lines else OneLineFormatter())
        handlers.append(file_handler)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn() as records too: one format on stderr
    set_levels(settings.log_level, settings.third_party_log_level)


def set_levels(level: str, third_party_level: str) -> None:
    """Our packages at ``level``, everything else at ``third_party_level``."""
    logging.getLogger().setLevel(third_party_level)
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(level)
    floor = max(logging.WARNING, logging.getLevelName(third_party_level))
    for name in QUIET_ALWAYS:
        logging.getLogger(name).setLevel(floor)
    # Prefect sets its loggers' levels from this when it is first imported; when it has
    # been already, they are set here.
    site_level = os.environ.setdefault("PREFECT_LOGGING_LEVEL", third_party_level)
    if "prefect" in sys.modules:
        logging.getLogger("prefect").setLevel(site_level)
