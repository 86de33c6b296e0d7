"""The worklist flag: an HL7 v2.5.1 ORU^R01 for a positive study, sent over MLLP.

RIS worklists are reordered by HL7 results, not by DICOM objects. For a study
whose AI level is "fracture suspected" or "fracture likely",
:func:`build_oru_r01` writes a preliminary (``P``) observation message: the
patient (PID), the order by accession number (ORC/OBR), the finding
``125605004^Fracture of bone^SCT`` with the level as a coded value, the
probability, and the disclaimer with the model's name and version. The outbox
sends the message file with :func:`send_mllp` and retries with backoff; an
``AA``/``CA`` acknowledgement means delivered, ``AR``/``CR`` a permanent refusal,
anything else (no answer, ``AE``) a retry.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hl7
from pydicom import Dataset

from config import FractureLevel
from config.domain.findings import AlgorithmIdentity, StudyFinding
from config.domain.vocabulary import (
    AI_RESULT_DISCLAIMER,
    PRIVATE_CODING_SCHEME,
    SYNTHETIC_DATA_WARNING,
)

__all__ = [
    "MllpResult",
    "build_oru_r01",
    "send_mllp",
    "send_mllp_files",
]

logger = logging.getLogger(__name__)

_SB, _EB, _CR = b"\x0b", b"\x1c", b"\x0d"
_LEVEL_CODES = {
    FractureLevel.SUSPECTED: "FXSUSPECTED",
    FractureLevel.LIKELY: "FXLIKELY",
}


def build_oru_r01(
    source: Dataset,
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    *,
    control_id: str,
    sending_application: str = "FRACTURE_TRIAGE",
    sending_facility: str = "",
    receiving_application: str = "RIS",
    receiving_facility: str = "",
    now: dt.datetime | None = None,
) -> str:
    """Build the ORU^R01 of a positive study (segments separated by carriage returns).

    Parameters
    ----------
    source: pydicom.Dataset
        One source image of the study (patient, accession number and study UID
        are read from its header).
    finding: config.domain.findings.StudyFinding
        The study finding; its level must be suspected or likely.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding`.
    control_id: str
        MSH-10, unique per message (at most 20 characters).

    Raises
    ------
    ValueError
        When the study is not positive or the control ID is empty or too long.
    """
    if not finding.is_positive or finding.fracture_probability is None:
        raise ValueError(
            f"study {finding.study_instance_uid} is not positive ({finding.level}): no ORU"
        )
    if not control_id or len(control_id) > 20:
        raise ValueError(f"control_id must be 1-20 characters, got {control_id!r}")
    if source.get("StudyInstanceUID") != finding.study_instance_uid:
        raise ValueError("the source image is not of the finding's study")
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    accession = _escape(str(source.get("AccessionNumber", "") or ""))
    name = source.get("PatientName")
    patient_name = (
        "^".join(_escape(part) for part in str(name).split("^")[:5]) if name is not None else ""
    )
    birth_date = str(source.get("PatientBirthDate", "") or "")
    sex = str(source.get("PatientSex", "") or "")
    level = finding.level
    assert level is not None  # a positive study has a level
    comment = f"{AI_RESULT_DISCLAIMER}. Model {algorithm.name} {algorithm.version}"
    if algorithm.trained_on_synthetic_data:
        comment += f". {SYNTHETIC_DATA_WARNING}"
    service = f"FXTRIAGE^AI fracture triage^{PRIVATE_CODING_SCHEME}"
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                _escape(sending_application),
                _escape(sending_facility),
                _escape(receiving_application),
                _escape(receiving_facility),
                stamp,
                "",
                "ORU^R01^ORU_R01",
                control_id,
                "P",
                "2.5.1",
            ]
        ),
        "|".join(
            [
                "PID",
                "1",
                "",
                f"{_escape(str(source.get('PatientID', '') or ''))}",
                "",
                patient_name,
                "",
                birth_date,
                sex,
            ]
        ),
        "|".join(["ORC", "RE", accession, accession]),
        "|".join(["OBR", "1", accession, accession, service, "", "", stamp] + [""] * 17 + ["P"]),
        "|".join(
            [
                "OBX",
                "1",
                "CWE",
                "125605004^Fracture of bone^SCT",
                "1",
                f"{_LEVEL_CODES[level]}^{_escape(level.value)}^{PRIVATE_CODING_SCHEME}",
                "",
                "",
                "A",
                "",
                "",
                "P",
                "",
                "",
                stamp,
            ]
        ),
        "|".join(
            [
                "OBX",
                "2",
                "NM",
                f"FXPROB^Fracture probability^{PRIVATE_CODING_SCHEME}",
                "1",
                f"{finding.fracture_probability:.3f}",
                "1^no units^UCUM",
                "",
                "",
                "",
                "",
                "P",
                "",
                "",
                stamp,
            ]
        ),
        "|".join(
            [
                "OBX",
                "3",
                "ST",
                "STUDYUID^Study Instance UID^99FXTRIAGE",
                "1",
                _escape(finding.study_instance_uid),
                "",
                "",
                "",
                "",
                "",
                "P",
            ]
        ),
        "|".join(["NTE", "1", "L", _escape(comment)]),
    ]
    message = "\r".join(segments)
    hl7.parse(message)  # must parse back: catches a broken segment before it is queued
    return message


@dataclass(frozen=True)
class MllpResult:
    """The outcome of one MLLP exchange."""

    success: bool
    permanent: bool = False
    error: str | None = None
    acknowledgement: str | None = None


def send_mllp(message: str | bytes, host: str, port: int, *, timeout: float = 30.0) -> MllpResult:
    """Send one HL7 message over MLLP and read the acknowledgement.

    Returns
    -------
    MllpResult
        success for ``AA``/``CA``; permanent for ``AR``/``CR``; otherwise a
        transient failure (connection refused, timeout, ``AE``, garbage).
    """
    payload = message.encode("utf-8") if isinstance(message, str) else message
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_SB + payload + _EB + _CR)
            buffer = b""
            while _EB + _CR not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
    except OSError as error:
        return MllpResult(False, error=f"MLLP {host}:{port}: {type(error).__name__}: {error}")
    start, end = buffer.find(_SB), buffer.find(_EB + _CR)
    if start < 0 or end < 0:
        return MllpResult(False, error=f"MLLP {host}:{port}: no framed acknowledgement")
    ack = buffer[start + 1 : end].decode("utf-8", errors="replace")
    try:
        code = str(hl7.parse(ack).segment("MSA")[1])
    except (KeyError, IndexError, ValueError) as error:
        return MllpResult(False, error=f"unreadable acknowledgement: {error}", acknowledgement=ack)
    if code in ("AA", "CA"):
        return MllpResult(True, acknowledgement=ack)
    return MllpResult(
        False,
        permanent=code in ("AR", "CR"),
        error=f"acknowledgement {code}",
        acknowledgement=ack,
    )


def send_mllp_files(
    paths: Sequence[Path], host: str, port: int, *, timeout: float = 30.0
) -> list[MllpResult]:
    """Send message files (one message each) in order, one connection per message."""
    return [send_mllp(path.read_bytes(), host, port, timeout=timeout) for path in paths]


def _escape(text: str) -> str:
    """HL7 escape sequences for the delimiters in free text."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", " ")
        .replace("\n", " ")
    )
