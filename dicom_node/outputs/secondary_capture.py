"""An annotated view as a DICOM Secondary Capture, and what every capture the node writes shares.

:func:`build_annotated_view` draws (:mod:`dicom_node.outputs.drawing`) the
radiograph of an assessed view under a band added above it with the result, the
model and the warnings; a positive view gets its box and, where its Grad-CAM map
is given, the heatmap on the absolute scale. It wraps the picture in an SC Image
of the source study (new series), RGB, compressed losslessly: JPEG 2000 Lossless by
default, whose reversible colour transform leaves the grey radiograph's colour
difference planes nearly empty (a third of JPEG-LS's bytes on a noisy 3000-pixel
view, which JPEG-LS codes as three identical planes).

:func:`rgb_secondary_capture` is the part the summary shares: the source's patient
and study, the algorithm as contributing equipment, Burned In Annotation ``YES``,
the disclaimer, a lossless transfer syntax.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Final

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.drawing import AnnotatedPicture, annotated_picture
from dicom_node.outputs.equipment import contributing_equipment, laterality
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sources import quiet_warnings, view_header

__all__ = [
    "ANNOTATED_HEATMAP_SERIES_DESCRIPTION",
    "ANNOTATED_SERIES_DESCRIPTION",
    "LOSSLESS_TRANSFER_SYNTAXES",
    "build_annotated_view",
    "rgb_secondary_capture",
]

logger = logging.getLogger(__name__)

#: Series Description of annotated views (box and result, no heatmap).
ANNOTATED_SERIES_DESCRIPTION: Final = "AI annotated views"
#: Series Description of annotated views with the Grad-CAM heatmap drawn.
ANNOTATED_HEATMAP_SERIES_DESCRIPTION: Final = "AI annotated views, heatmap"

#: The transfer syntaxes captures may be written with, by the setting's name.
LOSSLESS_TRANSFER_SYNTAXES: Final = MappingProxyType(
    {
        "jpeg-ls": JPEGLSLossless,
        "jpeg-2000": JPEG2000Lossless,
        "rle": RLELossless,
        "none": ExplicitVRLittleEndian,
    }
)

_BIPED_DIRECTIONS = frozenset("APRLHF")

#: The JPEG 2000 encoder (OpenJPEG) refuses images smaller than this along a side.
JPEG_2000_MIN_SIDE: Final = 32


def build_annotated_view(
    source: Dataset,
    display: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
    *,
    cam: np.ndarray | None = None,
    transfer_syntax_uid: str = JPEG2000Lossless,
) -> hd.sc.SCImage:
    """Build the annotated Secondary Capture of one assessed view.

    ``display`` is the source as its VOI renders it, ``(Rows, Columns)`` floats in
    [0, 1]; ``cam`` Grad-CAM's map on the same grid, drawn only on a positive view.
    The capture: RGB, the band's rows plus the source's rows, the source's columns,
    Source and Referenced Image Sequences pointing at ``source``. Wrong inputs raise
    TypeError or ValueError naming the value.
    """
    header = view_header(source, finding, algorithm, instance)
    expected = (int(header.Rows), int(header.Columns))
    if np.shape(display) != expected or (cam is not None and np.shape(cam) != expected):
        shapes = (np.shape(display), None if cam is None else np.shape(cam))
        raise ValueError(
            f"display and cam have shapes {shapes}; the source {header.SOPInstanceUID} "
            f"needs {expected}"
        )
    picture = annotated_picture(display, finding, algorithm, cam)
    description = (
        ANNOTATED_HEATMAP_SERIES_DESCRIPTION
        if picture.heatmap_drawn
        else ANNOTATED_SERIES_DESCRIPTION
    )
    sc = rgb_secondary_capture(
        header,
        picture.rgb,
        algorithm,
        instance,
        description,
        orientation=header.get("PatientOrientation"),
        side=laterality(header),
        transfer_syntax_uid=transfer_syntax_uid,
    )
    _keep_lossy_history(header, sc)
    _describe_derivation(sc, header, picture, finding, algorithm)
    logger.info(
        "built annotated view SC %s (series %s) of image %s: region %s, level %s, heatmap %s",
        instance.sop_instance_uid,
        instance.series_instance_uid,
        header.SOPInstanceUID,
        finding.region,
        finding.level,
        picture.heatmap_drawn,
    )
    return sc


def rgb_secondary_capture(
    reference: Dataset,
    pixels: np.ndarray,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
    description: str,
    *,
    orientation: object = None,
    side: str | None = None,
    transfer_syntax_uid: str = JPEG2000Lossless,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of `reference`'s patient and study, made by `algorithm`.

    `reference` must be a repaired header (:func:`~dicom_node.outputs.sources.repaired_header`);
    `orientation` is the Patient Orientation to write (None: empty, e.g. for a table),
    `side` the Laterality (``"L"``, ``"R"`` or None).
    """
    if transfer_syntax_uid not in LOSSLESS_TRANSFER_SYNTAXES.values():
        raise ValueError(
            f"transfer_syntax_uid {transfer_syntax_uid} is not one of "
            f"{sorted(LOSSLESS_TRANSFER_SYNTAXES)}"
        )
    if transfer_syntax_uid == JPEG2000Lossless and min(pixels.shape[:2]) < JPEG_2000_MIN_SIDE:
        transfer_syntax_uid = RLELossless  # the JPEG 2000 codec's limit; RLE is lossless too
    single_letters = _single_letters(orientation)
    with quiet_warnings("building a Secondary Capture"):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference,
            pixel_array=np.ascontiguousarray(pixels),
            # JPEG 2000 Lossless codes RGB with its reversible colour transform (YBR_RCT).
            photometric_interpretation=(
                hd.PhotometricInterpretationValues.YBR_RCT
                if transfer_syntax_uid == JPEG2000Lossless
                else hd.PhotometricInterpretationValues.RGB
            ),
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            patient_orientation=single_letters or ("A", "F"),
            laterality=side,
            transfer_syntax_uid=UID(transfer_syntax_uid),
            contributing_equipment=contributing_equipment(algorithm, description),
            **instance.series_attributes(description),
        )
    if single_letters is None:
        # highdicom takes single letters only: a source's "AL" or no orientation
        # (a table has none) is written as it is, or empty.
        sc.PatientOrientation = list(orientation) if orientation else None  # type: ignore[call-overload]
    if side is None:
        # Laterality is Type 2C: empty where no single side (highdicom takes L or R only).
        sc.Laterality = ""
    # No highdicom argument for these (General Image): the pixels carry burned-in text.
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = AI_RESULT_DISCLAIMER
    return sc


def _describe_derivation(
    sc: Dataset,
    source: Dataset,
    picture: AnnotatedPicture,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    """What was drawn, and the references to the source (no highdicom argument for these:
    SC Image and General Image)."""
    box = f"finding box ({finding.box_source})" if finding.is_positive and finding.box else ""
    heatmap = "Grad-CAM heatmap (absolute scale)" if picture.heatmap_drawn else ""
    drawn = " and ".join(part for part in (heatmap, box) if part) or "no marks"
    sc.DerivationDescription = (
        f"{drawn} of {algorithm.name} {algorithm.version} over the source image "
        f"(dotted: suspected, solid: likely); result band of {picture.band_rows} rows added "
        "above the image"
    )[:1024]
    sc.SourceImageSequence = [_image_reference(source, purpose=True)]
    sc.ReferencedImageSequence = [_image_reference(source, purpose=False)]


def _keep_lossy_history(source: Dataset, sc: Dataset) -> None:
    """A copy of a lossy-compressed image says so (General Image; no highdicom argument)."""
    if source.get("LossyImageCompression") != "01":
        return
    sc.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if source.get(keyword):
            setattr(sc, keyword, source[keyword].value)


def _single_letters(orientation: object) -> tuple[str, str] | None:
    """The orientation as highdicom takes it (two single letters), else None."""
    values = [str(v) for v in orientation] if orientation else []  # type: ignore[attr-defined]
    if len(values) == 2 and all(len(v) == 1 and v in _BIPED_DIRECTIONS for v in values):
        return values[0], values[1]
    return None


def _image_reference(source: Dataset, *, purpose: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose:
        item.PurposeOfReferenceCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        ]
    return item
