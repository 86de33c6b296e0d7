"""A view's Grad-CAM heatmap as a DICOM Parametric Map on the source image's grid.

A Secondary Capture of the heatmap is only pixels; a Parametric Map keeps the
values (float, 0 = no evidence, 1 = the map's strongest evidence) with a Real
World Value Mapping (label ``Grad-CAM``, UCUM unit ``1``), one map per view, so
viewers and downstream tools can threshold, fuse or re-colour it. It is one of
the primitives IHE AI Results lists for image-aligned results.

The Parametric Map IOD needs a Frame of Reference and a patient-based plane
(Plane Position and Plane Orientation (Patient), Pixel Measures); a projection
radiograph (CR/DX) has none of these. The map therefore gets a Frame of
Reference of its own, derived from the source's SOP Instance UID (the same for
every map of that view, never shared with other images), with the first pixel
at the origin, the row and column directions of the source's Patient
Orientation and the source's pixel spacing (Pixel Spacing, else Imager Pixel
Spacing). The plane is nominal: what ties the map to the view is the identical
Rows x Columns grid and the Derivation Image, Source Image and Referenced
Series references to the source. A view whose Patient Orientation does not
give two perpendicular directions, or that has no pixel spacing, gets no map
(:class:`UndefinedGeometryError`): a made-up orientation would put wrong
orientation labels on the map in a viewer.
"""

from __future__ import annotations

import datetime
import logging

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.tag import Tag

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.codes import NO_UNITS
from dicom_node.outputs.equipment import common_laterality, contributing_equipment, label_ai_series
from dicom_node.uids import check_new_uid, check_positive_number, derived_uid

__all__ = [
    "GRAD_CAM_LABEL",
    "PM_SERIES_DESCRIPTION",
    "UndefinedGeometryError",
    "build_heatmap_parametric_map",
    "orientation_cosines",
]

logger = logging.getLogger(__name__)

#: Series Description of the Parametric Map series (starts with "AI").
PM_SERIES_DESCRIPTION = "AI fracture heatmap (Parametric Map)"
#: LUT Explanation of the real world value mapping; the LUT Label is its short form.
GRAD_CAM_LABEL = "Grad-CAM"
_LUT_LABEL = "GRADCAM"

#: Unit vectors of the patient directions (DICOM LPS: +x left, +y posterior, +z head).
_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
_PIXEL_DATA = Tag("PixelData")


class UndefinedGeometryError(ValueError):
    """A source view lacks what the map's plane is made of (orientation or pixel spacing)."""


def orientation_cosines(patient_orientation: object) -> tuple[float, ...]:
    """The Image Orientation (Patient) that a view's Patient Orientation describes.

    Parameters
    ----------
    patient_orientation: object
        The source's Patient Orientation (0020,0020): two values, the patient
        directions of the rows (increasing column index) and of the columns
        (increasing row index), each one to three of ``A P R L H F``
        (e.g. ``["L", "F"]`` or ``["AL", "F"]``).

    Returns
    -------
    tuple[float, ...]
        Six direction cosines: the row direction, then the column direction.

    Raises
    ------
    UndefinedGeometryError
        When the value is missing, not two values of known letters, or gives
        two directions that are not perpendicular.
    """
    values = list(patient_orientation) if patient_orientation else []
    if len(values) != 2 or not all(isinstance(v, str) and v for v in values):
        raise UndefinedGeometryError(
            f"Patient Orientation {patient_orientation!r} does not name two directions"
        )
    vectors = []
    for value in values:
        if any(letter not in _DIRECTIONS for letter in value) or len(set(value)) != len(value):
            raise UndefinedGeometryError(f"Patient Orientation value {value!r} is not understood")
        vector = np.sum([_DIRECTIONS[letter] for letter in value], axis=0)
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            raise UndefinedGeometryError(f"Patient Orientation value {value!r} has no direction")
        vectors.append(vector / norm)
    if abs(float(np.dot(vectors[0], vectors[1]))) > 1e-6:
        raise UndefinedGeometryError(
            f"Patient Orientation {values!r} gives directions that are not perpendicular"
        )
    return tuple(round(float(c), 6) + 0.0 for c in np.concatenate(vectors))


def build_heatmap_parametric_map(
    source: Dataset,
    heatmap: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    series_created: datetime.datetime | None = None,
) -> hd.pm.ParametricMap:
    """Build the Parametric Map of one view's Grad-CAM heatmap.

    Parameters
    ----------
    source: pydicom.Dataset
        The source view (its header suffices; pixel data is not read).
    heatmap: numpy.ndarray
        ``(Rows, Columns)`` ``float32`` Grad-CAM map of `source`, already
        resampled to the source's grid, values in [0, 1].
    finding: config.domain.findings.ImageFinding
        The result of `source` (same SOP Instance UID, a supported region:
        only assessed views have a heatmap).
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding` and `heatmap`.
    series_instance_uid, sop_instance_uid: str
        UIDs of the new series and map.
    series_number, instance_number: int
        Positive numbers of the new series and map.
    series_created: datetime.datetime | None, optional
        When the series was made: its Series Date and Time (default: now).

    Returns
    -------
    highdicom.pm.ParametricMap
        One frame of 32-bit float values, the source's Rows x Columns, with a
        ``Grad-CAM`` real world value mapping (identity, unit ``1``), a 0-1
        window, Contributing Equipment naming the algorithm, and references
        to the source.

    Raises
    ------
    UndefinedGeometryError
        When the source has no usable Patient Orientation or pixel spacing.
    ValueError
        When an input is inconsistent (the message names the bad value).
    TypeError
        When an input has the wrong type.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    if not isinstance(finding, ImageFinding):
        raise TypeError(f"finding must be an ImageFinding, got {type(finding).__name__}")
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    missing = [
        keyword
        for keyword in (
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
    if finding.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError(
            f"finding is for image {finding.sop_instance_uid}, not for the source "
            f"{source.SOPInstanceUID}"
        )
    if not finding.assessed:
        raise ValueError(f"image {finding.sop_instance_uid} was not assessed: it has no heatmap")
    _check_heatmap(heatmap, (int(source.Rows), int(source.Columns)))
    check_new_uid("series_instance_uid", series_instance_uid)
    check_new_uid("sop_instance_uid", sop_instance_uid)
    if series_instance_uid == source.SeriesInstanceUID:
        raise ValueError(f"series_instance_uid {series_instance_uid} is the source series")
    check_positive_number("series_number", series_number)
    check_positive_number("instance_number", instance_number)

    grid = _projection_grid(source)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=_LUT_LABEL,
        lut_explanation=GRAD_CAM_LABEL,
        unit=NO_UNITS,
        value_range=(float(heatmap.min()), float(heatmap.max())),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=[grid],
        pixel_array=heatmap,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.version,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="GRADCAM",
        content_description=f"AI Grad-CAM heatmap, {AI_RESULT_DISCLAIMER}"[:64],
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        contributing_equipment=contributing_equipment(
            algorithm, "AI fracture triage: Grad-CAM heatmap"
        ),
    )
    # A projection has no slice: highdicom copies the grid's nominal thickness,
    # which the Pixel Measures of a single projection plane need not carry.
    measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        if keyword in measures:
            delattr(measures, keyword)
    label_ai_series(pm, PM_SERIES_DESCRIPTION, series_created)
    pm.Laterality = common_laterality([source])
    pm.ImageComments = AI_RESULT_DISCLAIMER
    logger.info(
        "built Parametric Map %s (series %s) of image %s: region %s",
        sop_instance_uid,
        series_instance_uid,
        source.SOPInstanceUID,
        finding.region,
    )
    return pm


def _projection_grid(source: Dataset) -> Dataset:
    """The source's header with the map's nominal plane, as highdicom's source image.

    A new dataset (the caller's source is not changed) holding the source's
    attributes except pixel data, plus the map's own Frame of Reference and
    plane (see the module description).
    """
    cosines = orientation_cosines(source.get("PatientOrientation"))
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if not spacing or len(spacing) != 2 or not all(float(v) > 0 for v in spacing):
        raise UndefinedGeometryError(
            f"image {source.SOPInstanceUID} has no Pixel Spacing or Imager Pixel Spacing"
        )
    grid = Dataset({tag: element for tag, element in source.items() if tag != _PIXEL_DATA})
    grid.FrameOfReferenceUID = derived_uid("projection frame of reference", source.SOPInstanceUID)
    grid.PositionReferenceIndicator = ""
    grid.ImagePositionPatient = [0.0, 0.0, 0.0]
    grid.ImageOrientationPatient = list(cosines)
    grid.PixelSpacing = [float(v) for v in spacing]
    # highdicom reads a thickness from a single-frame source; removed from the map.
    grid.SliceThickness = 1.0
    return grid


def _check_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> None:
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"heatmap must be a numpy array, got {type(heatmap).__name__}")
    if heatmap.dtype != np.float32:
        raise ValueError(f"heatmap must be float32, got dtype {heatmap.dtype}")
    if heatmap.shape != shape:
        raise ValueError(f"heatmap has shape {heatmap.shape}; the source grid is {shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds values that are not finite")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < 0.0 or high > 1.0 + 1e-6:
        raise ValueError(f"heatmap values span [{low}, {high}], not within [0, 1]")
