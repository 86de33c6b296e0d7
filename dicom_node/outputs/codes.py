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
* Triage level: the three :class:`config.FractureLevel` values have no standard
  code, so the level is a TEXT item under a private concept of the
  ``99FXTRIAGE`` coding scheme (identified in the SR's Coding Scheme
  Identification Sequence, see :data:`PRIVATE_CODING_SCHEME`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from config import REGIONS, FractureLevel
from config.domain.vocabulary import PRIVATE_CODING_SCHEME

__all__ = [
    "ABSENT",
    "COMMENT",
    "DEVICE_OBSERVER_NAME",
    "FINDING_SITE_BY_REGION",
    "FRACTURE_LEVEL",
    "FRACTURE_OF_BONE",
    "NO_UNITS",
    "PLAIN_RADIOGRAPHY",
    "PRESENT",
    "PROBABILITY",
    "UNDETERMINED",
    "finding_site",
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

#: Concept name of the triage level (a TEXT item holding a FractureLevel value).
FRACTURE_LEVEL: Final = Code("FXLEVEL", PRIVATE_CODING_SCHEME, "Fracture triage level")

#: Concept name of free-text remarks (disclaimers, unsupported regions).
COMMENT: Final = codes.DCM.Comment

#: Procedure reported in the TID 1500 report.
PLAIN_RADIOGRAPHY: Final = codes.SCT.PlainRadiography

#: Device observer name (TID 1004) of every object the node writes.
DEVICE_OBSERVER_NAME: Final = "fracture-triage"

#: CID 4 Anatomic Region concept for each region of :data:`config.REGIONS`.
FINDING_SITE_BY_REGION: Final = MappingProxyType(
    {
        "elbow": codes.SCT.ElbowJoint,  # 16953009
        "finger": codes.SCT.Finger,  # 7569003
        "forearm": codes.SCT.Forearm,  # 14975008
        "hand": codes.SCT.Hand,  # 85562004
        "humerus": codes.SCT.Humerus,  # 85050009
        "shoulder": codes.SCT.Shoulder,  # 16982005
        "wrist": codes.SCT.WristJoint,  # 74670003
    }
)

if set(FINDING_SITE_BY_REGION) != set(REGIONS):  # pragma: no cover - import-time guard
    raise RuntimeError(
        f"FINDING_SITE_BY_REGION covers {sorted(FINDING_SITE_BY_REGION)}, REGIONS is {REGIONS}"
    )


def finding_site(region: str) -> Code:
    """Return the anatomic region code of a supported region.

    Parameters
    ----------
    region: str
        One of :data:`config.REGIONS`.

    Returns
    -------
    pydicom.sr.coding.Code
        The CID 4 Anatomic Region concept.

    Raises
    ------
    ValueError
        When `region` is not one of :data:`config.REGIONS`.
    """
    try:
        return FINDING_SITE_BY_REGION[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}") from None


def presence(level: FractureLevel) -> Code:
    """Return the CID 240 presence value of a triage level.

    A fracture counts as present when the level is
    :attr:`config.FractureLevel.SUSPECTED` or :attr:`config.FractureLevel.LIKELY`.

    Parameters
    ----------
    level: config.FractureLevel
        Triage level.

    Returns
    -------
    pydicom.sr.coding.Code
        :data:`PRESENT` or :data:`ABSENT`.

    Raises
    ------
    ValueError
        When `level` is not a :class:`config.FractureLevel`.
    """
    if not isinstance(level, FractureLevel):
        raise ValueError(f"expected a FractureLevel, got {level!r}")
    return PRESENT if level.is_positive else ABSENT
