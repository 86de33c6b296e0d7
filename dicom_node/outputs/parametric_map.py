"""A view's Grad-CAM heatmap as a DICOM Parametric Map, at the resolution it really has.

A Secondary Capture of the heatmap is only pixels; a Parametric Map keeps the
values (0 = no evidence, 1 = the map's strongest evidence) with a Real World Value
Mapping (label ``Grad-CAM``, UCUM unit ``1``), one map per positive view, so viewers
and downstream tools can threshold, fuse or re-colour it. It is one of the
primitives IHE AI Results lists for image-aligned results.

Grad-CAM's grid is coarse (a few cells per side, upsampled smoothly), so the map is
stored on a grid of at most :data:`MAX_MAP_SIDE` pixels on its long side covering
the whole source image, as 16-bit integers with a rescale of 1/65535 (no float
data: 16 bits resolve far finer than the map's own detail). Its pixel spacing is
the source's scaled by the ratio of the two grids, and its first pixel's centre is
placed so the map's outer edges coincide with the source's.

The Parametric Map IOD needs a Frame of Reference and a patient-based plane
(Plane Position and Plane Orientation (Patient), Pixel Measures); a projection
radiograph (CR/DX) has none of these. The map therefore gets a Frame of
Reference of its own, derived from the source's SOP Instance UID (the same for
every map of that view, never shared with other images), with the source's first
pixel centre at the origin, the row and column directions of the source's Patient
Orientation and the source's pixel spacing (Pixel Spacing, else Imager Pixel
Spacing). The plane is nominal: what ties the map to the view is that geometry and
the Derivation Image, Source Image and Referenced Series references to the source.
A view whose Patient Orientation does not give two perpendicular directions, or
that has no pixel spacing, gets no map (:class:`UndefinedGeometryError`): a made-up
orientation would put wrong orientation labels on the map in a viewer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.tag import Tag

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.codes import NO_UNITS
from dicom_node.outputs.equipment import contributing_equipment, laterality
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sources import quiet_warnings, view_header
from dicom_node.uids import derived_uid

__all__ = [
    "GRAD_CAM_LABEL",
    "MAX_MAP_SIDE",
    "PM_SERIES_DESCRIPTION",
    "UndefinedGeometryError",
    "build_heatmap_parametric_map",
    "map_shape",
    "orientation_cosines",
]

logger = logging.getLogger(__name__)

#: Series Description of the Parametric Map series (starts with "AI").
PM_SERIES_DESCRIPTION = "AI heatmap (Parametric Map)"
#: Longest side of the map grid: Grad-CAM's few cells need no more.
MAX_MAP_SIDE = 512
#: The stored value of heat 1 (16-bit unsigned).
_STORED_MAX = 65535
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


def map_shape(rows: int, columns: int, max_side: int = MAX_MAP_SIDE) -> tuple[int, int]:
    """The map grid of a ``rows`` x ``columns`` view: the same aspect, long side <= max_side."""
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def build_heatmap_parametric_map(
    source: Dataset,
    heatmap: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
) -> hd.pm.ParametricMap:
    """Build the Parametric Map of one positive view's Grad-CAM heatmap.

    ``heatmap`` is the float map of ``source`` in [0, 1] covering the whole image, on
    the source's grid or any coarser grid of its aspect; one larger than
    :func:`map_shape` is reduced to it by area averaging. The map: one 16-bit frame,
    a ``Grad-CAM`` real world value mapping (slope 1/65535, unit ``1``), a 0-1 window,
    the algorithm as Contributing Equipment, references to the source. A source
    without usable Patient Orientation or pixel spacing raises
    :class:`UndefinedGeometryError`; other wrong inputs TypeError or ValueError.
    """
    header = view_header(source, finding, algorithm, instance)
    rows, columns = int(header.Rows), int(header.Columns)
    checked = _check_heatmap(heatmap, (rows, columns))
    largest = map_shape(rows, columns)
    values = checked if checked.shape[0] <= largest[0] else _reduced(checked, largest)
    geometry = _map_geometry(header, values.shape)
    stored = np.round(values * _STORED_MAX).astype(np.uint16)
    pm = _parametric_map(stored, geometry, algorithm, instance)
    # A projection has no slices: highdicom may add the nominal thickness and spacing.
    measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        if keyword in measures:
            delattr(measures, keyword)
    # General Series, Type 2C (empty where the view names no side); no highdicom argument.
    pm.Laterality = laterality(header) or ""
    pm.ImageComments = AI_RESULT_DISCLAIMER  # General Image; no highdicom argument
    logger.info(
        "built Parametric Map %s (series %s) of image %s: %d x %d, region %s",
        instance.sop_instance_uid,
        instance.series_instance_uid,
        header.SOPInstanceUID,
        *values.shape,
        finding.region,
    )
    return pm


def _parametric_map(
    stored: np.ndarray, geometry: _Geometry, algorithm: AlgorithmIdentity, instance: NewInstance
) -> hd.pm.ParametricMap:
    with quiet_warnings("building the Parametric Map"):
        return hd.pm.ParametricMap(
            source_images=[geometry.source],
            pixel_array=stored,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number=algorithm.version,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[_mapping()],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=_STORED_MAX / 2, window_width=_STORED_MAX)
            ],
            pixel_measures=geometry.measures,
            plane_orientation=geometry.orientation,
            plane_positions=[geometry.position],
            content_label="GRADCAM",
            content_description=f"AI Grad-CAM heatmap, {AI_RESULT_DISCLAIMER}"[:64],
            content_qualification=hd.ContentQualificationValues.RESEARCH,
            contributing_equipment=contributing_equipment(
                algorithm, "AI fracture triage: Grad-CAM heatmap"
            ),
            **instance.series_attributes(PM_SERIES_DESCRIPTION),
        )


def _mapping() -> hd.pm.RealWorldValueMapping:
    return hd.pm.RealWorldValueMapping(
        lut_label=_LUT_LABEL,
        lut_explanation=GRAD_CAM_LABEL,
        unit=NO_UNITS,
        value_range=(0, _STORED_MAX),
        slope=1.0 / _STORED_MAX,
        intercept=0.0,
    )


@dataclass(frozen=True)
class _Geometry:
    """The map's plane: the source header highdicom derives from, and the map's own grid."""

    source: Dataset
    measures: hd.PixelMeasuresSequence
    orientation: hd.PlaneOrientationSequence
    position: hd.PlanePositionSequence


def _map_geometry(source: Dataset, shape: tuple[int, ...]) -> _Geometry:
    """The nominal plane of the source (see the module description) and the map's on it.

    The map's spacing is the source's times rows/map rows and columns/map columns;
    its first pixel centre moves by half the difference of the spacings along each
    direction, so both grids share their outer edges.
    """
    cosines = orientation_cosines(source.get("PatientOrientation"))
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    try:
        row_spacing, column_spacing = (float(v) for v in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        row_spacing = column_spacing = 0.0
    if row_spacing <= 0 or column_spacing <= 0:
        raise UndefinedGeometryError(
            f"image {source.SOPInstanceUID} has no Pixel Spacing or Imager Pixel Spacing"
        )
    grid = Dataset({tag: element for tag, element in source.items() if tag != _PIXEL_DATA})
    grid.FrameOfReferenceUID = derived_uid("projection frame of reference", source.SOPInstanceUID)
    grid.PositionReferenceIndicator = ""
    grid.ImagePositionPatient = [0.0, 0.0, 0.0]
    grid.ImageOrientationPatient = list(cosines)
    grid.PixelSpacing = [row_spacing, column_spacing]
    # highdicom reads a thickness from a single-frame source; the map's own Pixel
    # Measures (below) carry none: a projection has no slice.
    grid.SliceThickness = 1.0
    map_rows, map_columns = shape
    spacing_rows = row_spacing * int(source.Rows) / map_rows
    spacing_columns = column_spacing * int(source.Columns) / map_columns
    along_row, along_column = np.array(cosines[:3]), np.array(cosines[3:])
    first = (
        along_row * (spacing_columns - column_spacing) / 2
        + along_column * (spacing_rows - row_spacing) / 2
    )
    return _Geometry(
        grid,
        hd.PixelMeasuresSequence(
            pixel_spacing=(spacing_rows, spacing_columns), slice_thickness=None
        ),
        hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=cosines),
        hd.PlanePositionSequence(
            coordinate_system="PATIENT", image_position=[round(float(v), 6) + 0.0 for v in first]
        ),
    )


def _reduced(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The heatmap on ``shape`` (area average; a map already that size is kept)."""
    if heatmap.shape == shape:
        return heatmap
    image = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    reduced = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BOX))
    return np.clip(reduced, 0.0, 1.0).astype(np.float32)


def _check_heatmap(heatmap: np.ndarray, source_shape: tuple[int, int]) -> np.ndarray:
    """A finite [0, 1] float map covering the source with its aspect (to a pixel)."""
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"heatmap must be a numpy array, got {type(heatmap).__name__}")
    if heatmap.dtype not in (np.float32, np.float64):
        raise ValueError(f"heatmap must be float, got dtype {heatmap.dtype}")
    rows, columns = source_shape
    if heatmap.ndim != 2 or not 0 < heatmap.shape[0] <= rows or not 0 < heatmap.shape[1] <= columns:
        raise ValueError(f"heatmap has shape {heatmap.shape}; the source grid is {source_shape}")
    if abs(heatmap.shape[0] * columns / rows - heatmap.shape[1]) > 1:
        raise ValueError(
            f"heatmap has shape {heatmap.shape}, not the aspect of the source grid {source_shape}"
        )
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds values that are not finite")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < 0.0 or high > 1.0 + 1e-6:
        raise ValueError(f"heatmap values span [{low}, {high}], not within [0, 1]")
    return np.clip(heatmap, 0.0, 1.0).astype(np.float32)
