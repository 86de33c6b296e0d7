"""The study's triage summary as one Secondary Capture: a table every viewer shows.

:func:`render_summary` draws, with Pillow, a dark 1024-pixel-wide page: the
disclaimer, the study decision (region, level, probability) and the operating
points, one table row per view (instance number, view, laterality, region,
fracture probability, level), the model's name and version and, for a model
trained on synthetic data, a warning in yellow. :func:`build_summary_secondary_capture`
wraps it in an SC Image of the study, in a new series, referencing every view.
The page names no patient: viewers show the patient from the header.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from config import FractureLevel
from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.equipment import common_laterality, contributing_equipment, label_ai_series
from dicom_node.uids import check_new_uid, check_positive_number

__all__ = [
    "SUMMARY_SERIES_DESCRIPTION",
    "SUMMARY_WIDTH",
    "build_summary_secondary_capture",
    "render_summary",
    "summary_rows",
]

logger = logging.getLogger(__name__)

#: Series Description of the summary series (starts with "AI", as PACS filters expect).
SUMMARY_SERIES_DESCRIPTION = "AI fracture triage summary"
#: Width of the summary page in pixels: sharp on a reading monitor, small on the wire.
SUMMARY_WIDTH = 1024

_BACKGROUND = (16, 16, 16)
_TEXT = (235, 235, 235)
_MUTED = (170, 170, 170)
_RULE = (90, 90, 90)
_WARNING = (255, 214, 0)
_LEVEL_COLOURS = {
    FractureLevel.NOT_SUSPECTED: (120, 200, 120),
    FractureLevel.SUSPECTED: (255, 170, 60),
    FractureLevel.LIKELY: (255, 90, 90),
}
_COLUMNS = ("#", "View", "Region", "Fracture p", "Result")
_COLUMN_X = (24, 90, 380, 560, 720)


def summary_rows(
    source_images: Sequence[Dataset], finding: StudyFinding
) -> list[tuple[str, str, str, str, str]]:
    """The table rows of the summary, one per view, in the order of `finding.images`.

    Parameters
    ----------
    source_images: Sequence[pydicom.Dataset]
        The study's source images (headers suffice).
    finding: config.domain.findings.StudyFinding
        The study finding; every image of it must be among `source_images`.

    Returns
    -------
    list[tuple[str, str, str, str, str]]
        Instance number, view (view position and laterality), region, fracture
        probability and level (``"not assessed"`` for an unsupported region).
    """
    sources = {str(ds.SOPInstanceUID): ds for ds in source_images}
    rows = []
    for image in finding.images:
        source = sources.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"image finding {image.sop_instance_uid} has no source image")
        rows.append(
            (
                str(source.get("InstanceNumber", "") or ""),
                _view_label(source),
                image.region or "-",
                "-" if image.fracture_probability is None else f"{image.fracture_probability:.2f}",
                _level_text(image),
            )
        )
    return rows


def render_summary(
    source_images: Sequence[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity
) -> np.ndarray:
    """Render the summary page.

    Returns
    -------
    numpy.ndarray
        ``(rows, 1024, 3)`` ``uint8`` RGB; at least 768 rows, taller for many views.
    """
    if not isinstance(finding, StudyFinding):
        raise TypeError(f"finding must be a StudyFinding, got {type(finding).__name__}")
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    rows = summary_rows(source_images, finding)
    title, body, small = _font(34), _font(24), _font(20)
    line = 36
    height = max(768, 24 + 11 * line + len(rows) * line + 5 * line)
    image = Image.new("RGB", (SUMMARY_WIDTH, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = 24
    draw.text((24, y), "AI fracture triage", fill=_TEXT, font=title)
    y += 52
    draw.text((24, y), AI_RESULT_DISCLAIMER.upper(), fill=_WARNING, font=body)
    y += line
    if algorithm.trained_on_synthetic_data:
        draw.text((24, y), SYNTHETIC_DATA_WARNING, fill=_WARNING, font=body)
        y += line
    y += line // 2

    if finding.not_assessed is not None:
        decision, colour = "NOT ASSESSED for fracture", _MUTED
        detail = finding.not_assessed.reason
    else:
        assert finding.level is not None and finding.operating_points is not None
        points = finding.operating_points
        decision = (
            f"{finding.region}: {finding.level.value.upper()} "
            f"(p={finding.fracture_probability:.2f})"
        )
        colour = _LEVEL_COLOURS[finding.level]
        detail = (
            f"Operating points: suspected at p >= {points.suspected:.2f}, "
            f"likely at p >= {points.likely:.2f}"
        )
    draw.text((24, y), "Study decision", fill=_MUTED, font=small)
    y += 28
    draw.text((24, y), decision, fill=colour, font=title)
    y += 52
    draw.text((24, y), detail, fill=_MUTED, font=small)
    y += line + line // 2

    for x, name in zip(_COLUMN_X, _COLUMNS, strict=True):
        draw.text((x, y), name, fill=_MUTED, font=small)
    y += 30
    draw.line((24, y, SUMMARY_WIDTH - 24, y), fill=_RULE, width=2)
    y += 8
    for row, image_finding in zip(rows, finding.images, strict=True):
        colour = _LEVEL_COLOURS.get(image_finding.level, _TEXT) if image_finding.level else _MUTED
        for x, value in zip(_COLUMN_X, row, strict=True):
            draw.text((x, y), value, fill=colour if x == _COLUMN_X[-1] else _TEXT, font=body)
        y += line
    draw.line((24, y, SUMMARY_WIDTH - 24, y), fill=_RULE, width=2)
    y += line // 2
    draw.text(
        (24, y),
        "Annotated views: dotted box = fracture suspected, solid box = fracture likely",
        fill=_MUTED,
        font=small,
    )
    y += line + line // 2
    draw.text((24, y), f"Model: {algorithm.name} {algorithm.version}", fill=_TEXT, font=body)
    y += line
    draw.text((24, y), f"Manufacturer: {algorithm.manufacturer}", fill=_MUTED, font=small)
    return np.asarray(image, dtype=np.uint8).copy()


def build_summary_secondary_capture(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    series_created: datetime.datetime | None = None,
) -> Dataset:
    """Build the study's summary Secondary Capture.

    Parameters
    ----------
    source_images: Sequence[pydicom.Dataset]
        The study's source images (headers suffice); patient and study come
        from the first.
    finding: config.domain.findings.StudyFinding
        The study finding.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding`.
    series_instance_uid, sop_instance_uid: str
        UIDs of the new series and image.
    series_number, instance_number: int
        Positive numbers of the new series and image.
    series_created: datetime.datetime | None, optional
        When the series was made: its Series Date and Time (default: now).

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sc.SCImage`: RGB, 1024 columns, Burned In
        Annotation ``YES``, Referenced Image Sequence naming every view,
        Contributing Equipment naming the algorithm.
    """
    if isinstance(source_images, Dataset) or not source_images:
        raise ValueError("source_images must be a non-empty sequence of datasets")
    if not isinstance(finding, StudyFinding):
        raise TypeError(f"finding must be a StudyFinding, got {type(finding).__name__}")
    for ds in source_images:
        if ds.get("StudyInstanceUID") != finding.study_instance_uid:
            raise ValueError(
                f"source image {ds.get('SOPInstanceUID')} is not of study "
                f"{finding.study_instance_uid}"
            )
    check_new_uid("series_instance_uid", series_instance_uid)
    check_new_uid("sop_instance_uid", sop_instance_uid)
    if series_instance_uid in {str(ds.SeriesInstanceUID) for ds in source_images}:
        raise ValueError(f"series_instance_uid {series_instance_uid} is a source series")
    check_positive_number("series_number", series_number)
    check_positive_number("instance_number", instance_number)

    pixels = render_summary(source_images, finding, algorithm)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_images[0],
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        patient_orientation=("A", "F"),  # required by highdicom; emptied below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=contributing_equipment(algorithm, "AI fracture triage summary"),
    )
    sc.PatientOrientation = None  # a table, not a projection of the patient
    sc.Laterality = common_laterality(source_images)
    label_ai_series(sc, SUMMARY_SERIES_DESCRIPTION, series_created)
    sc.ManufacturerModelName = algorithm.name
    sc.SoftwareVersions = algorithm.version
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = AI_RESULT_DISCLAIMER
    sc.DerivationDescription = f"Triage summary table of {algorithm.name} {algorithm.version}"
    references = []
    for ds in source_images:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        references.append(item)
    sc.ReferencedImageSequence = references
    logger.info(
        "built summary SC %s (series %s) for study %s: %d view(s), region %s, level %s",
        sop_instance_uid,
        series_instance_uid,
        finding.study_instance_uid,
        len(finding.images),
        finding.region,
        finding.level,
    )
    return sc


def _view_label(source: Dataset) -> str:
    parts = [
        str(value)
        for value in (
            source.get("ViewPosition"),
            source.get("ImageLaterality") or source.get("Laterality"),
        )
        if value
    ]
    return " ".join(parts) or str(source.get("Modality", "image"))


def _level_text(image: ImageFinding) -> str:
    if image.level is None:
        return "not assessed"
    return image.level.value


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, AttributeError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()
