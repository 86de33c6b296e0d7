"""Patient data that must never leave the DICOM files: which values, and scrubbing text of them.

Exception messages and library warnings sometimes quote the value that upset them (a
person name highdicom finds unusual, a date pydicom cannot parse). Before such a text
reaches a log, the audit trail, the triage runs' error column or Prefect's database,
:func:`scrub` replaces every patient value of the study it is about with ``<redacted>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pydicom import Dataset

#: Attributes whose values identify the patient or the visit (PS3.15 E.1, the ones that
#: radiograph headers carry).
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
)
REDACTED = "<redacted>"
#: Shorter values (a sex, a one-letter initial) are left: they would redact half a text.
_MIN_LENGTH = 3


def patient_values(datasets: Iterable[Dataset]) -> set[str]:
    """The patient values of ``datasets``: whole values and each name component."""
    values: set[str] = set()
    for dataset in datasets:
        for keyword in PATIENT_KEYWORDS:
            try:
                element = dataset.get(keyword)
            except Exception:  # unreadable: cannot leak what cannot be read
                continue
            for value in element if isinstance(element, list | tuple) else [element]:
                text = str(value or "").strip()
                values.add(text)
                values.update(part.strip() for part in re.split(r"[\^=]", text))
    return {value for value in values if len(value) >= _MIN_LENGTH}


def scrub(text: str, values: Iterable[str]) -> str:
    """``text`` with every one of ``values`` replaced by ``<redacted>`` (longest first)."""
    for value in sorted(set(values), key=len, reverse=True):
        pattern = rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"
        text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    return text


_QUOTED = re.compile(r"""'[^']*'|"[^"]*\"""")


def scrub_quoted(text: str) -> str:
    """Every quoted value of a library's message replaced: what pydicom and highdicom quote
    in a warning is the offending value, which may be a name or a date."""
    return _QUOTED.sub(f"'{REDACTED}'", text)


#: Loggers of the libraries that quote offending values in their messages.
QUOTING_LOGGERS = ("py.warnings", "pydicom", "highdicom", "pynetdicom")
_installed = False


def _quoting(name: str) -> bool:
    return any(name == logger or name.startswith(f"{logger}.") for logger in QUOTING_LOGGERS)


def capture_warnings() -> None:
    """Route Python warnings into logging, the quoting libraries' values scrubbed first.

    The scrub sits in the log record factory, so the record is made from the scrubbed
    text: no handler, filter or formatter downstream ever sees the value. Called when
    dicom_node is imported, so every process that reads or writes DICOM (the node, its
    receivers, workers, the CLI) has it before the first warning.
    """
    global _installed
    if _installed:
        return
    logging.captureWarnings(True)
    previous = logging.getLogRecordFactory()

    def factory(name: str, level: int, fn: str, lno: int, msg: object, args: object,
                *rest: object, **kwargs: object) -> logging.LogRecord:  # fmt: skip
        if _quoting(name):
            msg, args = scrub_quoted(_formatted(msg, args)), ()
        return previous(name, level, fn, lno, msg, args, *rest, **kwargs)

    logging.setLogRecordFactory(factory)
    _installed = True


def _formatted(msg: object, args: object) -> str:
    try:
        return str(msg) % args if args else str(msg)
    except (TypeError, ValueError):  # a malformed call: scrub what there is
        return f"{msg} {args}"
