"""What a radiograph's header says about itself, read for the intended-use gate.

:func:`header_facts` turns a dataset (no pixel data needed) into
:class:`~config.domain.intended_use.HeaderFacts`: body part, anatomic region codes,
descriptions, view, species, age in years, image type. Real headers are often empty
or malformed (``19800000`` as a birth date, an age of ``045``): whatever cannot be
read is left out rather than guessed, so an imperfect header never blocks a study by
itself. The facts hold no name, ID or date, only the age in whole years or months.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from pydicom import Dataset

from config.domain.intended_use import HeaderFacts

_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def header_facts(dataset: Dataset) -> HeaderFacts:
    """The facts the header gate reads; absent or unreadable values are left out."""
    return HeaderFacts(
        modality=_text(dataset, "Modality"),
        body_part_examined=_text(dataset, "BodyPartExamined"),
        anatomic_region_codes=tuple(_code_values(dataset.get("AnatomicRegionSequence"))),
        descriptions=tuple(
            value
            for keyword in ("StudyDescription", "SeriesDescription", "ProtocolName")
            if (value := _text(dataset, keyword))
        ),
        view_position=_text(dataset, "ViewPosition"),
        species=tuple(_species(dataset)),
        age_years=age_in_years(dataset),
        image_type=tuple(str(v) for v in _values(dataset, "ImageType")),
        burned_in_annotation=_text(dataset, "BurnedInAnnotation"),
    )


def age_in_years(dataset: Dataset) -> float | None:
    """Patient's Age (``045Y``, ``006M``...), else Birth Date against Study Date; None."""
    age = _text(dataset, "PatientAge")
    match = _AGE.match(age or "")
    if match:
        return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)] / 365.25
    born = parse_date(_text(dataset, "PatientBirthDate"))
    seen = parse_date(_text(dataset, "StudyDate") or _text(dataset, "SeriesDate"))
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25


def parse_date(value: str | None) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``) as a date; None for anything else (``19800000``, "")."""
    if not value or not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _text(dataset: Dataset, keyword: str) -> str | None:
    text = "\\".join(str(value) for value in _values(dataset, keyword)).strip()
    return text or None


def _values(dataset: Dataset, keyword: str) -> list[object]:
    """An element's values as a list; a value pydicom cannot convert counts as absent."""
    try:
        value = dataset.get(keyword)
    except Exception:
        return []
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]


def _code_values(sequence: object) -> Iterable[str]:
    for item in sequence or []:  # type: ignore[attr-defined]
        value = getattr(item, "CodeValue", None)
        if value:
            yield str(value)


def _species(dataset: Dataset) -> Iterable[str]:
    description = _text(dataset, "PatientSpeciesDescription")
    if description:
        yield description
    yield from _code_values(dataset.get("PatientSpeciesCodeSequence"))
