"""Source headers as the builders use them: checked, indexed, and repaired where broken.

Real headers are imperfect: Type 2 attributes absent (anonymised or modality-made
data), dates such as ``19800000``, person names of one component, values longer than
their VR allows, an unknown character set. Every output copies the patient and study
from its sources, so one broken value would make every object fail or fail dciodvfy.
:func:`repaired_header` returns a copy of a header that every builder can use:

* a value that does not parse or does not fit its VR (length, characters, value
  multiplicity, a date or time that does not exist, a Patient's Sex other than
  M/F/O) is written empty, and an undecodable one too;
* a Type 2 attribute the outputs copy that is absent is added empty;
* a malformed UID other than the four that identify the image is dropped;
* text that is not ASCII is written in UTF-8 (``ISO_IR 192``), other text with the
  default repertoire (an unknown Specific Character Set is reported).

What was repaired is named by attribute keyword only, never by value, so the caller
can audit it without the audit holding patient data. A one-component person name
(valid DICOM) gets a trailing ``^``, which means the same (PS3.5 6.2.1.2) and keeps
highdicom from warning with the name in the warning's text.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import DA, DT, TM, PersonName, validate_value

from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from dicom_node.outputs.instance import NewInstance

__all__ = [
    "COPIED_TYPE_2",
    "IDENTIFYING_UIDS",
    "RepairedHeader",
    "check_sources",
    "check_types",
    "quiet_warnings",
    "repaired_header",
    "repaired_headers",
    "view_header",
]

logger = logging.getLogger(__name__)

#: The UIDs that identify a source image: required, never repaired.
IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Type 2 attributes of the Patient and General Study modules every output copies.
COPIED_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

_PIXEL_DATA = Tag("PixelData")
_SPECIFIC_CHARACTER_SET = Tag("SpecificCharacterSet")
#: VRs whose values pydicom holds as bytes or numbers: nothing to repair in them.
_UNCHECKED_VRS = frozenset(
    {"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "US", "SS", "UL", "SL", "FL", "FD", "AT",
     "UV", "SV"}
)  # fmt: skip
_DATE_TIME_TYPES = {"DA": DA, "TM": TM, "DT": DT}
_PATIENT_SEXES = frozenset({"", "M", "F", "O"})
_TEXT_CONTROLS = "\x1b\t\n\x0c\r"


@dataclass(frozen=True)
class RepairedHeader:
    """A source header every builder can use, and the keywords of what was repaired."""

    dataset: Dataset
    repaired: tuple[str, ...] = ()


@contextmanager
def quiet_warnings(what: str) -> Iterator[None]:
    """Hold back library warnings while header values are read or copied.

    pydicom and highdicom put the offending value in some warnings' text (an invalid
    person name, a date); a header value must never reach a log. Each warning is
    logged by category only.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.debug("%s: a %s was withheld (it may quote a header value)", what,
                     warning.category.__name__)  # fmt: skip


def repaired_header(source: Dataset) -> RepairedHeader:
    """A copy of ``source``'s header (no pixel data) whose values every builder accepts.

    Raises
    ------
    TypeError
        When ``source`` is not a dataset.
    """
    check_types(source=(source, Dataset))
    header = Dataset()
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    repaired: list[str] = []
    non_ascii = False
    with quiet_warnings("reading a source header"):
        for tag in list(source.keys()):
            if tag in (_PIXEL_DATA, _SPECIFIC_CHARACTER_SET) or tag.is_private:
                continue
            element, fixed = _repaired_element(source, tag)
            if element is not None:
                header.add(element)
                non_ascii = non_ascii or _has_non_ascii(element)
            if fixed:
                repaired.append(element.keyword if element is not None else _keyword(tag))
    for keyword in COPIED_TYPE_2:
        if keyword not in header:
            setattr(header, keyword, "")
            repaired.append(keyword)
    repaired.extend(_character_set(source, header, non_ascii))
    repaired.extend(_window(header))
    return RepairedHeader(header, tuple(dict.fromkeys(repaired)))


def repaired_headers(sources: Sequence[Dataset]) -> tuple[list[Dataset], tuple[str, ...]]:
    """:func:`repaired_header` of each source, and the union of what was repaired."""
    results = [repaired_header(ds) for ds in sources]
    keywords = dict.fromkeys(keyword for result in results for keyword in result.repaired)
    return [result.dataset for result in results], tuple(keywords)


def check_types(**arguments: tuple[object, type]) -> None:
    """Raise TypeError naming the first argument that is not of its type.

    ``check_types(finding=(finding, StudyFinding))`` -> "finding must be a StudyFinding, got
    dict".
    """
    for name, (value, expected) in arguments.items():
        if not isinstance(value, expected):
            raise TypeError(f"{name} must be a {expected.__name__}, got {type(value).__name__}")


def view_header(
    source: Dataset, finding: ImageFinding, algorithm: AlgorithmIdentity, instance: NewInstance
) -> Dataset:
    """The repaired header of the one assessed view an output is about.

    Raises TypeError for an argument of the wrong type; ValueError when the view was
    not assessed, its header lacks an identifying UID, Rows or Columns, it is not the
    image the finding is about, or ``instance`` is its series or instance.
    """
    check_types(
        finding=(finding, ImageFinding),
        algorithm=(algorithm, AlgorithmIdentity),
        instance=(instance, NewInstance),
    )
    if not finding.assessed:
        raise ValueError(f"image {finding.sop_instance_uid} was not assessed: no output of it")
    header = repaired_header(source).dataset
    missing = [k for k in (*IDENTIFYING_UIDS, "Rows", "Columns") if not header.get(k)]
    if missing:
        raise ValueError(f"source lacks {', '.join(missing)}")
    if finding.sop_instance_uid != header.SOPInstanceUID:
        raise ValueError(
            f"finding is for image {finding.sop_instance_uid}, not for the source "
            f"{header.SOPInstanceUID}"
        )
    instance.check_new_among([header])
    return header


def study_headers(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
) -> dict[str, Dataset]:
    """The repaired headers of a study's views by SOP Instance UID, checked for an output
    about the whole study (every image of ``finding`` among them, ``instance`` new)."""
    check_types(
        finding=(finding, StudyFinding),
        algorithm=(algorithm, AlgorithmIdentity),
        instance=(instance, NewInstance),
    )
    checked = check_sources(source_images, finding.study_instance_uid)
    instance.check_new_among(checked.values())
    for image in finding.images:
        if image.sop_instance_uid not in checked:
            raise ValueError(
                f"image finding {image.sop_instance_uid} has no source image; "
                f"sources are {sorted(checked)}"
            )
    return {uid: repaired_header(ds).dataset for uid, ds in checked.items()}


def check_sources(source_images: Sequence[Dataset], study_instance_uid: str) -> dict[str, Dataset]:
    """Check the source images of one study and index them by SOP Instance UID.

    Raises
    ------
    TypeError
        When ``source_images`` is not a sequence of datasets.
    ValueError
        When it is empty, an image lacks an identifying UID, belongs to another study
        or is given twice.
    """
    if isinstance(source_images, Dataset) or not isinstance(source_images, Sequence):
        raise TypeError(
            f"source_images must be a sequence of datasets, got {type(source_images).__name__}"
        )
    if not source_images:
        raise ValueError(f"study {study_instance_uid}: source_images is empty")
    sources: dict[str, Dataset] = {}
    for position, ds in enumerate(source_images):
        if not isinstance(ds, Dataset):
            raise TypeError(f"source_images[{position}] is a {type(ds).__name__}, not a Dataset")
        missing = [keyword for keyword in IDENTIFYING_UIDS if not ds.get(keyword)]
        if missing:
            raise ValueError(f"source_images[{position}] lacks {', '.join(missing)}")
        uid = str(ds.SOPInstanceUID)
        if ds.StudyInstanceUID != study_instance_uid:
            raise ValueError(
                f"source image {uid} belongs to study {ds.StudyInstanceUID}, "
                f"not to the finding's study {study_instance_uid}"
            )
        if uid in sources:
            raise ValueError(f"source image {uid} is given twice")
        sources[uid] = ds
    return sources


def _repaired_element(source: Dataset, tag: BaseTag) -> tuple[DataElement | None, bool]:
    """The element as the copy holds it (None: dropped) and whether it was repaired."""
    try:
        element = source[tag]
        value = element.value
    except Exception:  # an undecodable value: pydicom's errors vary with the defect
        return _empty(tag, source), True
    if element.VR in _UNCHECKED_VRS or value is None or value == "":
        return copy.deepcopy(element), False
    if _valid(element.VR, value, tag):
        if element.VR == "PN":
            return DataElement(tag, "PN", _disambiguated_name(value)), False
        return copy.deepcopy(element), False
    if element.VR == "UI":
        return (None if element.keyword not in IDENTIFYING_UIDS else element), True
    return DataElement(tag, element.VR, ""), True


def _empty(tag: BaseTag, source: Dataset) -> DataElement | None:
    try:
        vr = source.get_item(tag).VR
    except Exception:
        return None
    return None if vr in _UNCHECKED_VRS or vr == "UI" else DataElement(tag, vr, "")


def _valid(vr: str, value: object, tag: BaseTag) -> bool:
    values = _values(value)
    if not _multiplicity_fits(tag, len(values)):
        return False
    if tag == Tag("PatientSex") and str(value).strip() not in _PATIENT_SEXES:
        return False
    if tag == Tag("PatientOrientation") and not all(
        re.fullmatch("[LRAPHF]{1,3}", str(item)) for item in values
    ):
        return False  # a human's directions (PS3.3 C.7.6.1.1.1)
    try:
        for item in values:
            if vr in _DATE_TIME_TYPES:
                if item != "" and _DATE_TIME_TYPES[vr](item) is None:
                    return False
            elif isinstance(item, str | PersonName):
                validate_value(vr, str(item), RAISE)
                if _has_control_characters(vr, str(item)):
                    return False
                if vr == "PN" and not _valid_name(str(item)):
                    return False
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _has_control_characters(vr: str, text: str) -> bool:
    """Control characters a VR does not allow: ESC only (ISO 2022), and in the text VRs
    also TAB, LF, FF and CR (PS3.5 6.1.3)."""
    allowed = _TEXT_CONTROLS if vr in ("ST", "LT", "UT") else "\x1b"
    return any((ord(c) < 32 or c == "\x7f") and c not in allowed for c in text)


def _valid_name(name: str) -> bool:
    """At most five components per group (PS3.5 6.2.1.2)."""
    return all(len(group.split("^")) <= 5 for group in name.split("="))


def _multiplicity_fits(tag: BaseTag, count: int) -> bool:
    """Whether ``count`` values fit the dictionary's VM ("1", "2", "1-n", "2-2n", ...)."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return True
    low, _, high = vm.partition("-")
    if not low.isdigit():
        return True
    if not high:
        return count == int(low)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def _disambiguated_name(value: object) -> str:
    """A person name whose every non-empty component group has a ``^`` (same meaning)."""
    groups = str(value).split("=")
    return "=".join(group if not group or "^" in group else f"{group}^" for group in groups)


def _has_non_ascii(element: DataElement) -> bool:
    return any(
        isinstance(value, str | PersonName) and not str(value).isascii()
        for value in _values(element.value)
    )


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


def _character_set(source: Dataset, header: Dataset, non_ascii: bool) -> list[str]:
    """UTF-8 where any text is not ASCII, else the default (the values are decoded text
    already); a character set pydicom does not know is reported."""
    declared = source.get("SpecificCharacterSet")
    terms = [declared] if isinstance(declared, str) else list(declared or [])
    if non_ascii:
        header.SpecificCharacterSet = "ISO_IR 192"
    known = all(not term or str(term).strip() in python_encoding for term in terms)
    return [] if known else ["SpecificCharacterSet"]


def _window(header: Dataset) -> list[str]:
    """Window Center and Width as pairs (PS3.3 C.11.2), else neither: both are dropped."""
    centre, width = header.get("WindowCenter"), header.get("WindowWidth")
    if centre is None and width is None:
        return []
    if (
        centre not in (None, "")
        and width not in (None, "")
        and len(_values(centre)) == len(_values(width))
    ):
        return []
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if keyword in header:
            delattr(header, keyword)
    return ["WindowCenter", "WindowWidth"]


def _keyword(tag: BaseTag) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
