"""Coded concepts used by the DICOM outputs, defined once.

Where pydicom's code dictionary (generated from DICOM PS3.16) knows a concept,
the code is taken from there so the meaning matches the standard's wording.
Choices worth knowing:

* Finding: ``(125605004, SCT, "Fracture of bone")``, the SNOMED CT disorder.
* Presence: DICOM CID 240 "Present/Absent": ``(52101004, SCT, "Present")``,
  ``(272519000, SCT, "Absent")`` and ``(373068000, SCT, "Undetermined")``.
  Older DICOM editions used ``2667000`` for "Absent"; that SNOMED CT concept is
  inactive and the current CID 240 (and pydicom) use ``272519000``.
* Finding sites: DICOM CID 4 "Anatomic Region" (the codes of Body Part
  Examined in PS3.16 Annex L). Elbow and wrist are the *joint* concepts there
  (``16953009``, ``74670003``), as CID 4 has no separate "elbow region" code.
* Probability: ``(122157, DCM, "Probability")`` with UCUM unit ``1``
  ("no units"): a dimensionless value in [0, 1]. The CAD concepts of CID 6048
  ("Probability of cancer", "Certainty of Finding") mean something else.
* Procedure reported: ``(168537006, SCT, "Plain radiography")``.
* Triage level and not-assessed reason: no standard code exists, so both are
  coded values of this project's private scheme ``99FXTRIAGE`` (identified in the
  SR's Coding Scheme Identification Sequence, listed in docs/conformance.md): the
  concept ``FXLEVEL`` with one code per :class:`~config.domain.vocabulary.FractureLevel`,
  the concept ``FXNOTASSESSED`` with one code per :class:`~config.domain.findings.Gate`,
  and ``FXREGIONP``, stage 1's probability of the region (a NUM, unit ``1``).
* Fracture type (bundles with a type head): the concept ``FXTYPE`` whose value is a
  code of the bundle's own type (``FXT`` and eight hex digits of the name's SHA-1, the
  name as the meaning: the types are the training data's, not a standard list), and
  ``FXTYPEP``, the type's probability given a fracture (a NUM, unit ``1``).
"""

from __future__ import annotations

import hashlib
from types import MappingProxyType
from typing import Final

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from config.domain.anatomy import finding_site_code
from config.domain.findings import Gate
from config.domain.vocabulary import PRIVATE_CODING_SCHEME, FractureLevel

__all__ = [
    "ABSENT",
    "COMMENT",
    "DEVICE_OBSERVER_NAME",
    "FINDING_SITE",
    "FRACTURE_LEVEL",
    "FRACTURE_OF_BONE",
    "FRACTURE_TYPE",
    "FRACTURE_TYPE_PROBABILITY",
    "LATERALITY",
    "LATERALITY_CONCEPT",
    "LEVEL_CODES",
    "NOT_ASSESSED_REASON",
    "NO_UNITS",
    "PLAIN_RADIOGRAPHY",
    "PRESENT",
    "PRIVATE_CODES",
    "PROBABILITY",
    "QUALITATIVE_EVALUATIONS",
    "REASON_CODES",
    "REGION_PROBABILITY",
    "UNDETERMINED",
    "finding_site",
    "fracture_type_code",
    "presence",
]

#: The finding the models look for.
FRACTURE_OF_BONE: Final = Code("125605004", "SCT", "Fracture of bone")

#: CID 240 Present/Absent.
PRESENT: Final = codes.SCT.Present
ABSENT: Final = codes.SCT.Absent
UNDETERMINED: Final = codes.SCT.Undetermined

#: Concept name of the fracture probability (a NUM item).
PROBABILITY: Final = codes.DCM.Probability
#: UCUM "1": the probability is a dimensionless number in [0, 1].
NO_UNITS: Final = codes.UCUM.NoUnits

#: Concept name of the triage level (a CODE item, one of :data:`LEVEL_CODES`).
FRACTURE_LEVEL: Final = Code("FXLEVEL", PRIVATE_CODING_SCHEME, "Fracture triage level")
#: The coded triage levels.
LEVEL_CODES: Final = MappingProxyType(
    {
        level: Code(level.code_value, PRIVATE_CODING_SCHEME, level.value.capitalize())
        for level in FractureLevel
    }
)

#: Concept name of why an image or study was not assessed (a CODE item of :data:`REASON_CODES`).
NOT_ASSESSED_REASON: Final = Code(
    "FXNOTASSESSED", PRIVATE_CODING_SCHEME, "Reason not assessed for fracture"
)
#: One coded reason per gate that can stop an assessment.
REASON_CODES: Final = MappingProxyType(
    {
        Gate.HEADER: Code("FXGATEHEADER", PRIVATE_CODING_SCHEME, "Header outside the intended use"),
        Gate.PIXELS: Code(
            "FXGATEPIXELS", PRIVATE_CODING_SCHEME, "Image outside what the model assesses"
        ),
        Gate.CONFLICT: Code(
            "FXGATECONFLICT", PRIVATE_CODING_SCHEME, "Header and image name different regions"
        ),
        Gate.UNREADABLE: Code("FXGATEUNREADABLE", PRIVATE_CODING_SCHEME, "Image unreadable"),
    }
)

#: Concept name of stage 1's probability of the region it named (a NUM, unit 1).
REGION_PROBABILITY: Final = Code(
    "FXREGIONP", PRIVATE_CODING_SCHEME, "Probability of the anatomic region"
)

#: Concept name of a flagged view's most probable fracture type (a CODE item whose
#: value is :func:`fracture_type_code`), and of that type's probability (a NUM, unit 1).
FRACTURE_TYPE: Final = Code("FXTYPE", PRIVATE_CODING_SCHEME, "Most probable fracture type")
FRACTURE_TYPE_PROBABILITY: Final = Code(
    "FXTYPEP", PRIVATE_CODING_SCHEME, "Probability of the fracture type"
)

#: Every private code, for the conformance statement and its test (the type values are
#: each bundle's own, see :func:`fracture_type_code`).
PRIVATE_CODES: Final = (
    FRACTURE_LEVEL,
    *LEVEL_CODES.values(),
    NOT_ASSESSED_REASON,
    *REASON_CODES.values(),
    REGION_PROBABILITY,
    FRACTURE_TYPE,
    FRACTURE_TYPE_PROBABILITY,
)

#: Concept name of free-text remarks (disclaimers, operating points, reasons).
COMMENT: Final = codes.DCM.Comment

#: Procedure reported in the TID 1500 report.
PLAIN_RADIOGRAPHY: Final = codes.SCT.PlainRadiography

#: Device observer name (TID 1004) of every object the node writes.
DEVICE_OBSERVER_NAME: Final = "fracture-triage"

#: Laterality modifiers of a finding site (SNOMED CT, CID 244).
LATERALITY: Final = MappingProxyType({"L": codes.SCT.Left, "R": codes.SCT.Right})
#: The concept names of a finding site and its laterality (the study's result).
FINDING_SITE: Final = codes.SCT.FindingSite
LATERALITY_CONCEPT: Final = codes.SCT.Laterality
#: TID 1500's container of results that belong to no image region (the study's).
QUALITATIVE_EVALUATIONS: Final = Code("C0034375", "UMLS", "Qualitative Evaluations")


def finding_site(region: str) -> Code:
    """Return the anatomic region code of a body part (any of the domain's body parts).

    Raises
    ------
    ValueError
        When `region` is not a body part the domain knows.
    """
    scheme, value, meaning = finding_site_code(region)
    return Code(value, scheme, meaning)


def fracture_type_code(name: str) -> Code:
    """The private code of a bundle's fracture type: a short stable value (Code Value is
    at most 16 characters), the type's name as the meaning (at most 64).

    Raises
    ------
    ValueError
        When `name` is empty.
    """
    if not name.strip():
        raise ValueError("a fracture type code needs a name")
    digest = hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:8].upper()
    return Code(f"FXT{digest}", PRIVATE_CODING_SCHEME, name.strip()[:64])


def presence(level: FractureLevel) -> Code:
    """Return the CID 240 presence value of a triage level.

    A fracture counts as present when the level is
    :attr:`config.FractureLevel.SUSPECTED` or :attr:`config.FractureLevel.LIKELY`.

    Raises
    ------
    ValueError
        When `level` is not a :class:`config.FractureLevel`.
    """
    if not isinstance(level, FractureLevel):
        raise ValueError(f"expected a FractureLevel, got {level!r}")
    return PRESENT if level.is_positive else ABSENT
