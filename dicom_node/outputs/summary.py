"""The study's triage summary as one Secondary Capture: the result at a glance.

:func:`summary_page` composes the page as lines of text: the title, the disclaimer
and, for a model trained on synthetic data, its warning; the intended use; the
study's decision (region, level, probability) and the operating points of that
region only (without a "suspected" level where its two points are equal), or, for a
study not assessed, the reason and no operating points; one table row per view
(instance number, view, region, fracture probability, level or why it was not
assessed); the model. :func:`render_summary` draws it with Pillow on a dark page
1024 pixels wide in fonts of 22-36 pixels (legible at a viewer's default zoom), and
:func:`build_summary_secondary_capture` wraps it in an SC Image of the study, in a
new series, referencing every view. The page names no patient: viewers show the
patient from the header.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.uid import JPEG2000Lossless

from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING, FractureLevel
from dicom_node.outputs.drawing import font, wrap_text
from dicom_node.outputs.equipment import common_laterality, laterality
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.secondary_capture import rgb_secondary_capture
from dicom_node.outputs.sources import check_types, study_headers
from dicom_node.outputs.wording import (
    GATE_LABELS,
    not_assessed_sentence,
    operating_points_sentence,
    probability_text,
    site_text,
)

__all__ = [
    "SUMMARY_SERIES_DESCRIPTION",
    "SUMMARY_WIDTH",
    "PageLine",
    "build_summary_secondary_capture",
    "render_summary",
    "summary_page",
    "summary_rows",
]

logger = logging.getLogger(__name__)

#: Series Description of the summary series (starts with "AI", as PACS filters expect).
SUMMARY_SERIES_DESCRIPTION: Final = "AI summary"
#: Width of the summary page in pixels: sharp on a reading monitor, small on the wire.
SUMMARY_WIDTH: Final = 1024
_MIN_HEIGHT = 768
_MARGIN = 28

Style = Literal["title", "warning", "label", "decision", "detail", "header", "row", "note"]

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
#: Font size and line height of each style, in pixels.
_SIZES: dict[Style, tuple[int, int]] = {
    "title": (36, 52),
    "warning": (24, 34),
    "label": (22, 30),
    "decision": (36, 52),
    "detail": (24, 34),
    "header": (22, 34),
    "row": (26, 38),
    "note": (22, 32),
}
_COLUMN_X = (_MARGIN, 84, 270, 460, 600)
_COLUMNS = ("#", "View", "Region", "Fracture p", "Result")


@dataclass(frozen=True)
class PageLine:
    """One line of the page: a text, or a table row's cells, in a style and colour."""

    cells: tuple[str, ...]
    style: Style
    colour: tuple[int, int, int] = _TEXT
    rule_below: bool = False


def summary_rows(
    source_images: Sequence[Dataset], finding: StudyFinding
) -> list[tuple[str, str, str, str, str]]:
    """The table rows, one per view in the order of ``finding.images``.

    Instance number, view (view position and laterality), region, fracture
    probability and level, or ``"not assessed (<gate>)"``.
    """
    sources = {str(ds.SOPInstanceUID): ds for ds in source_images}
    rows = []
    for image in finding.images:
        source = sources.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"image finding {image.sop_instance_uid} has no source image")
        probability = image.fracture_probability
        rows.append(
            (
                str(source.get("InstanceNumber", "") or ""),
                _view_label(source),
                image.region or "-",
                "-" if probability is None else probability_text(probability),
                _result_text(image),
            )
        )
    return rows


def summary_page(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    intended_use: str | None = None,
) -> list[PageLine]:
    """The page's lines, top to bottom (what :func:`render_summary` draws)."""
    check_types(finding=(finding, StudyFinding), algorithm=(algorithm, AlgorithmIdentity))
    rows = summary_rows(source_images, finding)
    lines = [
        PageLine(("AI fracture triage",), "title"),
        PageLine((AI_RESULT_DISCLAIMER.upper(),), "warning", _WARNING),
    ]
    if algorithm.trained_on_synthetic_data:
        lines.append(PageLine((SYNTHETIC_DATA_WARNING,), "warning", _WARNING))
    if intended_use:
        lines.append(PageLine((f"Intended use: {intended_use}",), "note", _MUTED))
    lines.append(PageLine(("Study decision",), "label", _MUTED))
    lines.extend(_decision(finding, source_images))
    lines.append(PageLine(_COLUMNS, "header", _MUTED, rule_below=True))
    for row, image in zip(rows, finding.images, strict=True):
        colour = _LEVEL_COLOURS[image.level] if image.level is not None else _MUTED
        lines.append(PageLine(row, "row", colour))
    lines[-1] = PageLine(lines[-1].cells, "row", lines[-1].colour, rule_below=True)
    if finding.assessed:
        lines.extend(
            PageLine((f"#{row[0] or index}: {not_assessed_sentence(image.not_assessed)}",), "note")
            for index, (row, image) in enumerate(zip(rows, finding.images, strict=True), 1)
            if image.not_assessed is not None
        )
        boxes = "Annotated views: solid box = fracture likely"
        if finding.operating_points is not None and finding.operating_points.distinct:
            boxes = "Annotated views: dotted box = fracture suspected, solid box = fracture likely"
        lines.append(PageLine((boxes,), "note", _MUTED))
    lines.append(PageLine((f"Model: {algorithm.name} {algorithm.version}",), "detail"))
    lines.append(PageLine((f"Manufacturer: {algorithm.manufacturer}",), "note", _MUTED))
    return lines


def _decision(finding: StudyFinding, source_images: Sequence[Dataset]) -> list[PageLine]:
    """The decision and the operating points of the study's region, or why not assessed."""
    if finding.not_assessed is not None:
        return [
            PageLine(("NOT ASSESSED for fracture",), "decision", _MUTED),
            PageLine((f"Reason: {finding.not_assessed.reason.strip()}",), "detail"),
        ]
    assert finding.level and finding.region and finding.operating_points
    assert finding.fracture_probability is not None
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    views = [by_uid[i.sop_instance_uid] for i in finding.images if i.region == finding.region]
    site = site_text(finding.region, common_laterality(views))
    probability = probability_text(finding.fracture_probability)
    return [
        PageLine(
            (f"{finding.level.value.upper()}: {site} (p={probability})",),
            "decision",
            _LEVEL_COLOURS[finding.level],
        ),
        PageLine(
            (operating_points_sentence(finding.operating_points, finding.region),),
            "detail",
            _MUTED,
        ),
    ]


def render_summary(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    intended_use: str | None = None,
) -> np.ndarray:
    """Draw the summary page: ``(rows, 1024, 3)`` uint8 RGB, at least 768 rows."""
    lines = _wrapped(summary_page(source_images, finding, algorithm, intended_use))
    height = max(_MIN_HEIGHT, 2 * _MARGIN + sum(_SIZES[line.style][1] + 8 for line in lines))
    image = Image.new("RGB", (SUMMARY_WIDTH, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = _MARGIN
    for line in lines:
        size, advance = _SIZES[line.style]
        xs = _COLUMN_X if len(line.cells) > 1 else (_MARGIN,)
        for x, cell in zip(xs, line.cells, strict=True):
            colour = line.colour if line.style != "row" or x == _COLUMN_X[-1] else _TEXT
            draw.text((x, y), cell, fill=colour, font=font(size))
        y += advance
        if line.rule_below:
            draw.line((_MARGIN, y, SUMMARY_WIDTH - _MARGIN, y), fill=_RULE, width=2)
        y += 8
    return np.asarray(image, dtype=np.uint8).copy()


def _wrapped(lines: list[PageLine]) -> list[PageLine]:
    """Single-text lines too wide for the page, split at spaces."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    room = SUMMARY_WIDTH - 2 * _MARGIN
    result = []
    for line in lines:
        if len(line.cells) > 1:
            result.append(line)
            continue
        typeface = font(_SIZES[line.style][0])
        for part in wrap_text(measure, line.cells[0], typeface, room):
            result.append(PageLine((part,), line.style, line.colour))
    return result


def build_summary_secondary_capture(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
    *,
    intended_use: str | None = None,
    transfer_syntax_uid: str = JPEG2000Lossless,
) -> hd.sc.SCImage:
    """Build the study's summary Secondary Capture: the page of :func:`render_summary`,
    1024 columns, patient and study from the first source, Referenced Image Sequence
    naming every view; ``intended_use`` is printed under the warnings. Wrong inputs
    raise TypeError or ValueError naming the value.
    """
    headers = list(study_headers(source_images, finding, algorithm, instance).values())
    pixels = render_summary(headers, finding, algorithm, intended_use)
    sc = rgb_secondary_capture(
        headers[0],
        pixels,
        algorithm,
        instance,
        SUMMARY_SERIES_DESCRIPTION,
        side=common_laterality(headers),
        transfer_syntax_uid=transfer_syntax_uid,
    )
    # No highdicom argument for these (SC Image, General Image).
    sc.DerivationDescription = f"Triage summary of {algorithm.name} {algorithm.version}"
    sc.ReferencedImageSequence = [_reference(ds) for ds in headers]
    logger.info(
        "built summary SC %s (series %s) for study %s: %d view(s), region %s, level %s",
        instance.sop_instance_uid,
        instance.series_instance_uid,
        finding.study_instance_uid,
        len(finding.images),
        finding.region,
        finding.level,
    )
    return sc


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _view_label(source: Dataset) -> str:
    parts = [str(source.get("ViewPosition") or "").strip(), laterality(source) or ""]
    return " ".join(part for part in parts if part) or str(source.get("Modality") or "image")


def _result_text(image: ImageFinding) -> str:
    if image.not_assessed is not None:
        return f"not assessed ({GATE_LABELS[image.not_assessed.gate]})"
    assert image.level is not None
    return image.level.value
