"""The Grad-CAM overlay of one image as a DICOM Secondary Capture.

:func:`build_overlay_secondary_capture` wraps an RGB overlay (the radiograph
with its heatmap, rendered elsewhere) in an SC Image of the source study, new
series, after burning a banner into its top rows: the disclaimer, the region,
level and probability, the model, and a warning when the model was trained on
synthetic data. The banner is part of the pixels, so it survives any viewer.
"""

from __future__ import annotations

import datetime
import logging

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.equipment import contributing_equipment, label_ai_series
from dicom_node.uids import check_new_uid, check_positive_number

__all__ = [
    "SC_BOXES_SERIES_DESCRIPTION",
    "SC_SERIES_DESCRIPTION",
    "banner_lines",
    "build_overlay_secondary_capture",
    "burn_banner",
]

logger = logging.getLogger(__name__)

#: Series Description of the overlay series (starts with "AI", as PACS filters expect).
SC_SERIES_DESCRIPTION = "AI fracture heatmap"
#: Series Description when the site switched the heatmap off (boxes only).
SC_BOXES_SERIES_DESCRIPTION = "AI fracture annotations"

_TEXT_COLOUR = (255, 255, 255)
_WARNING_COLOUR = (255, 214, 0)
_BAND_COLOUR = (0, 0, 0)
#: Font size as a fraction of the image width before fitting the longest line.
_FONT_SIZE_PER_WIDTH = 1 / 40
#: Smallest font size in pixels: below it, lines wrap instead of shrinking.
_MIN_FONT_SIZE = 10


def banner_lines(finding: ImageFinding, algorithm: AlgorithmIdentity) -> list[str]:
    """Return the banner text of an overlay, one string per line.

    Parameters
    ----------
    finding: config.domain.findings.ImageFinding
        The result of the image.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding`.

    Returns
    -------
    list[str]
        The disclaimer, the result (e.g. ``"wrist: fracture suspected (p=0.83)"``),
        the model name and version and, for a model trained on synthetic data,
        ``"TRAINED ON SYNTHETIC DATA - NOT FOR CLINICAL USE"``.

    Raises
    ------
    TypeError
        When an argument has the wrong type.
    """
    if not isinstance(finding, ImageFinding):
        raise TypeError(f"finding must be an ImageFinding, got {type(finding).__name__}")
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    if finding.not_assessed is not None:
        result = f"not assessed for fracture: {finding.not_assessed.reason}"
    else:
        result = f"{finding.region}: {finding.level.value} (p={finding.fracture_probability:.2f})"
    lines = [AI_RESULT_DISCLAIMER, result, f"model: {algorithm.name} {algorithm.version}"]
    if algorithm.trained_on_synthetic_data:
        lines.append(SYNTHETIC_DATA_WARNING)
    return lines


def burn_banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Burn text lines into a dark band across the top of an RGB image.

    The font size scales with the image width (about 1/40 of it) and shrinks
    until the longest line fits, down to 10 pixels; lines that still do not
    fit wrap at spaces. The banner is readable on large radiographs and
    complete on small ones.

    Parameters
    ----------
    rgb: numpy.ndarray
        ``(rows, columns, 3)`` ``uint8`` image; not modified.
    lines: list[str]
        Text lines, top to bottom; a line equal to
        :data:`dicom_node.outputs.codes.SYNTHETIC_DATA_WARNING` is drawn in yellow.

    Returns
    -------
    numpy.ndarray
        A new ``(rows, columns, 3)`` ``uint8`` image with the banner.

    Raises
    ------
    ValueError
        When `rgb` is not a ``(rows, columns, 3)`` ``uint8`` array or `lines` is empty.
    """
    _check_rgb(rgb)
    if not lines:
        raise ValueError("lines is empty: a banner needs at least one line")
    rows, columns = rgb.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    margin = max(2, columns // 100)
    room = columns - 2 * margin
    size = max(_MIN_FONT_SIZE, round(columns * _FONT_SIZE_PER_WIDTH))
    font = _font(size)
    while size > _MIN_FONT_SIZE and _widest(draw, lines, font) > room:
        size -= 1
        font = _font(size)
    # Lines that still do not fit (narrow images) wrap at spaces.
    wrapped = [
        (part, line == SYNTHETIC_DATA_WARNING)
        for line in lines
        for part in _wrap(draw, line, font, room)
    ]
    line_height = round(size * 1.25)
    band_height = min(rows, 2 * margin + line_height * len(wrapped))
    draw.rectangle((0, 0, columns - 1, band_height - 1), fill=_BAND_COLOUR)
    for number, (text, warning) in enumerate(wrapped):
        colour = _WARNING_COLOUR if warning else _TEXT_COLOUR
        draw.text((margin, margin + number * line_height), text, fill=colour, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def build_overlay_secondary_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    heatmap: bool = True,
    series_created: datetime.datetime | None = None,
) -> Dataset:
    """Build the Secondary Capture of an image's heatmap overlay.

    Parameters
    ----------
    source: pydicom.Dataset
        The source image (metadata suffices; pixel data is not read).
    overlay_rgb: numpy.ndarray
        ``(Rows, Columns, 3)`` ``uint8`` RGB rendering of the source with its
        heatmap, the size of the source.
    finding: config.domain.findings.ImageFinding
        The result of `source` (same SOP Instance UID).
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding`.
    series_instance_uid: str
        Series Instance UID of the new overlay series.
    sop_instance_uid: str
        SOP Instance UID of the SC image.
    series_number: int
        Series Number of the overlay series (positive).
    instance_number: int
        Instance Number of the SC image (positive).
    heatmap: bool, optional
        Whether `overlay_rgb` holds the Grad-CAM heatmap (default) or the
        box only; it steers the Series and Derivation Descriptions.
    series_created: datetime.datetime | None, optional
        When the series was made: its Series Date and Time (default: now).

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sc.SCImage`: same patient and study as `source`,
        RGB, Burned In Annotation ``YES``, Source and Referenced Image
        Sequences pointing at `source`.

    Raises
    ------
    ValueError
        When an input is inconsistent (the message names the bad value).
    TypeError
        When an input has the wrong type.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    missing = [
        keyword
        for keyword in (
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "Rows",
            "Columns",
        )
        if not source.get(keyword)
    ]
    if missing:
        raise ValueError(f"source lacks {', '.join(missing)}")
    lines = banner_lines(finding, algorithm)  # checks the types of finding and algorithm
    _check_rgb(overlay_rgb)
    expected = (int(source.Rows), int(source.Columns), 3)
    if overlay_rgb.shape != expected:
        raise ValueError(
            f"overlay_rgb has shape {overlay_rgb.shape}; the source "
            f"{source.SOPInstanceUID} needs {expected}"
        )
    if finding.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError(
            f"finding is for image {finding.sop_instance_uid}, not for the source "
            f"{source.SOPInstanceUID}"
        )
    check_new_uid("series_instance_uid", series_instance_uid)
    check_new_uid("sop_instance_uid", sop_instance_uid)
    if series_instance_uid == source.SeriesInstanceUID:
        raise ValueError(
            f"series_instance_uid {series_instance_uid} is the source series; "
            "the SC needs a new one"
        )
    if sop_instance_uid == source.SOPInstanceUID:
        raise ValueError(f"sop_instance_uid {sop_instance_uid} is the source's SOP Instance UID")
    check_positive_number("series_number", series_number)
    check_positive_number("instance_number", instance_number)

    pixels = burn_banner(overlay_rgb, lines)
    laterality = source.get("ImageLaterality") or source.get("Laterality")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        # highdicom accepts single-letter orientations only; the source's value
        # (e.g. "AL", or empty) is copied below instead.
        patient_orientation=("A", "F"),
        laterality=laterality if laterality in ("L", "R") else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=contributing_equipment(
            algorithm, "AI fracture triage: annotated copy of the view"
        ),
    )
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = orientation if orientation else None
    label_ai_series(
        sc, SC_SERIES_DESCRIPTION if heatmap else SC_BOXES_SERIES_DESCRIPTION, series_created
    )
    sc.ManufacturerModelName = algorithm.name
    sc.SoftwareVersions = algorithm.version
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = AI_RESULT_DISCLAIMER
    drawn = "Grad-CAM heatmap and finding box" if heatmap else "finding box"
    sc.DerivationDescription = (
        f"{drawn} of {algorithm.name} {algorithm.version} over the source image "
        "(dotted: suspected, solid: likely), with a burned-in AI result banner"
    )
    if source.get("LossyImageCompression") == "01":
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                setattr(sc, keyword, source[keyword].value)
    sc.SourceImageSequence = [_image_reference(source, purpose=True)]
    sc.ReferencedImageSequence = [_image_reference(source, purpose=False)]
    logger.info(
        "built overlay SC %s (series %s) of image %s: region %s, level %s",
        sop_instance_uid,
        series_instance_uid,
        source.SOPInstanceUID,
        finding.region,
        finding.level,
    )
    return sc


def _image_reference(source: Dataset, *, purpose: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose:
        item.PurposeOfReferenceCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        ]
    return item


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected a (rows, columns, 3) RGB array, got shape {rgb.shape}")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, AttributeError):  # pragma: no cover - Pillow without FreeType
        logger.warning("FreeType unavailable: banner drawn with Pillow's small bitmap font")
        return ImageFont.load_default()


def _widest(
    draw: ImageDraw.ImageDraw,
    lines: list[str],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> float:
    return max(draw.textlength(line, font=font) for line in lines)


def _wrap(
    draw: ImageDraw.ImageDraw,
    line: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    room: float,
) -> list[str]:
    """Split `line` at spaces into parts at most `room` pixels wide (a long word stays whole)."""
    parts: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and draw.textlength(candidate, font=font) > room:
            parts.append(current)
            current = word
        else:
            current = candidate
    parts.append(current)
    return parts
