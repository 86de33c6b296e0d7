"""The patient-data sweep: no patient name, ID, birth date or accession number may leave
the DICOM files.

The test data carries distinctive values (tests/dicom_node/conftest.py, the sample studies
of models/training/phantoms.py, the load and fuzz scenarios). Two nets catch them:

* every log record created in the test process, whatever handlers Prefect or a test
  installs later: the scan sits in the log record factory, not in a handler;
* at the end of the session, every file the node, its workers and Prefect wrote under the
  session's temporary folders: log files, Prefect homes and API databases (flow-run
  parameters, results, names, run logs) and the audit events of every audit database
  (which also hold exception messages: refusal and failure reasons).

DICOM files, the store and the outputs are where patient data belongs and are not scanned;
neither are the logs of the peers (Orthanc, dcmtk), which are not our product.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Names, IDs and accession numbers: matched anywhere.
PATIENT_TEXT = (
    "Doe^Jane",
    "PID-0042",
    "ACC123",
    "Phantom^Wanda",
    "Phantom^Henry",
    "Phantom^Elena",
    "Phantom^Charles",
    "PHANTOM-00",
    "ACC0000",  # the sample studies' accession numbers: ACC0000001 ...
)
#: Birth dates (DICOM DA): matched as whole numbers only, so that a UID or a float that
#: happens to hold the same digits is not taken for one.
BIRTH_DATES = ("19310417", "19480229")

_PATTERN = re.compile(
    "|".join(
        [re.escape(text) for text in PATIENT_TEXT]
        + [rf"(?<![0-9.]){date}(?![0-9])" for date in BIRTH_DATES]
    )
)
_BYTES_PATTERN = re.compile(_PATTERN.pattern.encode())


def find_patient_data(text: str) -> list[str]:
    """The patient-data values in ``text``."""
    return sorted(set(_PATTERN.findall(text)))


class LogRecordScanner:
    """Scans every log record the process creates, from any logger, through any handler.

    Prefect's logging setup replaces the root logger's handlers, so a handler would be
    silently removed; the record factory stays.
    """

    def __init__(self) -> None:
        self.leaks: list[str] = []
        self._lock = threading.Lock()
        self._extra: tuple[str, ...] = ()

    def install(self) -> None:
        # The factory in place now (dicom_node's scrubbing one, if it came first) stays
        # in the chain: taken at install time, not when this object was made.
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            self._scan(record)
            return record

        logging.setLogRecordFactory(factory)

    def _scan(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[0].__name__}: {record.exc_info[1]}"  # type: ignore[union-attr]
        found = find_patient_data(text) + [value for value in self._extra if value in text]
        if found:
            with self._lock:
                self.leaks.append(f"log {record.name}: {found}: {text[:300]}")

    def watching(self, *values: str) -> _Watch:
        """Temporarily also catch ``values`` (the scanner's own test uses a canary)."""
        return _Watch(self, values)


class _Watch:
    def __init__(self, scanner: LogRecordScanner, values: tuple[str, ...]) -> None:
        self._scanner, self._values = scanner, values
        self.caught: list[str] = []

    def __enter__(self) -> _Watch:
        self._before = len(self._scanner.leaks)
        self._scanner._extra = self._values
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._scanner._extra = ()
        with self._scanner._lock:
            # The canary's records are the test's, not leaks of the session.
            new = self._scanner.leaks[self._before :]
            self.caught = [line for line in new if any(v in line for v in self._values)]
            self._scanner.leaks[self._before :] = [line for line in new if line not in self.caught]


#: The one scanner of the test session (installed by tests/conftest.py).
log_scanner = LogRecordScanner()


def _is_peer_file(path: Path) -> bool:
    # Orthanc's and dcmtk's own folders and logs: the peers' business, not ours.
    return any(part.startswith("orthanc") or part.startswith("storescp") for part in path.parts)


def _written_by_us(path: Path) -> bool:
    name = path.name
    if name.endswith(".log") or name.endswith(".out"):
        return True
    if any(part.startswith("prefect") or part == ".prefect" for part in path.parts):
        return True  # Prefect homes: API database, logs, storage
    return name.startswith("prefect") and ".db" in name


def _audit_databases(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.suffix == ".db" and not path.name.startswith("prefect"):
            yield path


def _audit_event_leaks(database: Path) -> list[str]:
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        rows = connection.execute("SELECT * FROM audit_events").fetchall()
    except sqlite3.Error:
        return []  # not an audit database
    finally:
        connection.close()
    leaks = []
    for row in rows:
        found = find_patient_data(" ".join(str(value) for value in row))
        if found:
            leaks.append(f"audit event in {database}: {found}: {str(row)[:300]}")
    return leaks


def scan_files(roots: Iterable[Path], prefect_home: Path | None = None) -> list[str]:
    """Patient data in the logs, Prefect stores and audit events under ``roots``.

    ``prefect_home`` (the test process's own Prefect home) is scanned whole.
    """
    leaks: list[str] = []
    files = [
        path
        for root in roots
        if root.is_dir()
        for path in root.rglob("*")
        if path.is_file() and not _is_peer_file(path.relative_to(root))
    ]
    whole = (
        {path for path in prefect_home.rglob("*") if path.is_file()}
        if prefect_home is not None and prefect_home.is_dir()
        else set()
    )
    for path in [*files, *sorted(whole)]:
        if path not in whole and not _written_by_us(path):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found = sorted({match.decode() for match in _BYTES_PATTERN.findall(data)})
        if found:
            leaks.append(f"file {path}: {found}")
    for database in _audit_databases(files):
        leaks += _audit_event_leaks(database)
    return leaks
