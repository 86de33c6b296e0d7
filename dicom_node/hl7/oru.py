"""The worklist flag: an HL7 v2.5.1 ORU^R01 for a positive study, sent over MLLP.

RIS worklists are reordered by HL7 results, not by DICOM objects. For a study
whose AI level is "fracture suspected" or "fracture likely",
:func:`build_oru_r01` writes a preliminary (``P``) observation message: the
patient (PID), the order by accession number (ORC/OBR), the finding
``125605004^Fracture of bone^SCT`` with the level as a coded value, the
probability, and the disclaimer with the model's name and version. The outbox
sends the message file (:mod:`dicom_node.delivery.mllp`) and retries with backoff.

Free text is escaped with the ``hl7`` package's escaping (delimiters as ``\\F\\``,
``\\S\\``..., non-ASCII as ``\\Xhh\\``), after control characters are made spaces:
a field is one line, and the package writes characters below 0x10 as a malformed
``\\X a\\`` (a space-padded hex).
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import hl7
from pydicom import Dataset

from config.domain.findings import AlgorithmIdentity, StudyFinding
from config.domain.vocabulary import (
    AI_RESULT_DISCLAIMER,
    PRIVATE_CODING_SCHEME,
    SYNTHETIC_DATA_WARNING,
)
from dicom_node.outputs.codes import LEVEL_CODES

__all__ = ["build_oru_r01", "escape"]

logger = logging.getLogger(__name__)

#: A message with the standard delimiters, whose escaping :func:`escape` uses.
_DELIMITERS = hl7.parse("MSH|^~\\&|FRACTURE_TRIAGE")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    accession = escape(str(source.get("AccessionNumber", "") or ""))
    name = source.get("PatientName")
    patient_name = (
        "^".join(escape(part) for part in str(name).split("=")[0].split("^")[:5])
        if name is not None
        else ""
    )
    birth_date = escape(str(source.get("PatientBirthDate", "") or ""))
    sex = escape(str(source.get("PatientSex", "") or ""))
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
                escape(sending_application),
                escape(sending_facility),
                escape(receiving_application),
                escape(receiving_facility),
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
                f"{escape(str(source.get('PatientID', '') or ''))}",
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
                f"{LEVEL_CODES[level].value}^{escape(level.value)}^{PRIVATE_CODING_SCHEME}",
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
                escape(finding.study_instance_uid),
                "",
                "",
                "",
                "",
                "",
                "P",
            ]
        ),
        "|".join(["NTE", "1", "L", escape(comment)]),
    ]
    message = "\r".join(segments)
    hl7.parse(message)  # must parse back: catches a broken segment before it is queued
    return message


def escape(text: str) -> str:
    """Free text for one HL7 field: control characters as spaces, then the ``hl7``
    package's escape sequences for the delimiters and non-ASCII characters."""
    return str(_DELIMITERS.escape(_CONTROL.sub(" ", text)))
