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

    ``source`` is one image of the study (patient and accession number are read from
    its header, repaired: :mod:`dicom_node.outputs.sources`); ``control_id`` is MSH-10,
    unique per message, 1-20 characters. A study that is not positive, a control ID
    out of range or a source of another study raise ValueError.
    """
    if not finding.is_positive or finding.fracture_probability is None or not finding.level:
        raise ValueError(
            f"study {finding.study_instance_uid} is not positive ({finding.level}): no ORU"
        )
    if not control_id or len(control_id) > 20:
        raise ValueError(f"control_id must be 1-20 characters, got {control_id!r}")
    if source.get("StudyInstanceUID") != finding.study_instance_uid:
        raise ValueError("the source image is not of the finding's study")
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    accession = _text(source, "AccessionNumber")
    level = finding.level
    segments = [
        _segment(
            "MSH", "^~\\&", escape(sending_application), escape(sending_facility),
            escape(receiving_application), escape(receiving_facility), stamp, "",
            "ORU^R01^ORU_R01", control_id, "P", "2.5.1",
        ),
        _patient(source),
        _segment("ORC", "RE", accession, accession),
        _segment("OBR", "1", accession, accession, _SERVICE, "", "", stamp, *[""] * 17, "P"),
        _observation(
            "1", "CWE", "125605004^Fracture of bone^SCT",
            f"{level.code_value}^{escape(level.value)}^{PRIVATE_CODING_SCHEME}",
            stamp, abnormal="A",
        ),
        _observation(
            "2", "NM", f"FXPROB^Fracture probability^{PRIVATE_CODING_SCHEME}",
            f"{finding.fracture_probability:.3f}", stamp, units="1^no units^UCUM",
        ),
        _observation(
            "3", "ST", f"STUDYUID^Study Instance UID^{PRIVATE_CODING_SCHEME}",
            escape(finding.study_instance_uid), stamp,
        ),
        _segment("NTE", "1", "L", escape(_comment(algorithm))),
    ]  # fmt: skip
    message = "\r".join(segments)
    hl7.parse(message)  # must parse back: catches a broken segment before it is queued
    return message


_SERVICE = f"FXTRIAGE^AI fracture triage^{PRIVATE_CODING_SCHEME}"


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields))


def _observation(
    set_id: str,
    value_type: str,
    identifier: str,
    value: str,
    stamp: str,
    *,
    units: str = "",
    abnormal: str = "",
) -> str:
    """An OBX: preliminary (OBX-11 P), observed at ``stamp`` (OBX-14)."""
    return _segment(
        "OBX", set_id, value_type, identifier, "1", value, units, "", abnormal, "", "", "P",
        "", "", stamp,
    )  # fmt: skip


def _patient(source: Dataset) -> str:
    """PID: ID, name (the first component group, five components), birth date, sex."""
    name = source.get("PatientName")
    components = str(name).split("=")[0].split("^")[:5] if name is not None else []
    return _segment(
        "PID", "1", "", _text(source, "PatientID"), "", "^".join(map(escape, components)), "",
        _text(source, "PatientBirthDate"), _text(source, "PatientSex"),
    )  # fmt: skip


def _text(source: Dataset, keyword: str) -> str:
    return escape(str(source.get(keyword, "") or ""))


def _comment(algorithm: AlgorithmIdentity) -> str:
    comment = f"{AI_RESULT_DISCLAIMER}. Model {algorithm.name} {algorithm.version}"
    if algorithm.trained_on_synthetic_data:
        comment += f". {SYNTHETIC_DATA_WARNING}"
    return comment


def escape(text: str) -> str:
    """Free text for one HL7 field: control characters as spaces, then the ``hl7``
    package's escape sequences for the delimiters and non-ASCII characters."""
    return str(_DELIMITERS.escape(_CONTROL.sub(" ", text)))
