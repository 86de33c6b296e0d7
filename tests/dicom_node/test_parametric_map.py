"""The Grad-CAM Parametric Map: values, grid, geometry, references and dciodvfy validity."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.parametric_map import (
    GRAD_CAM_LABEL,
    PM_SERIES_DESCRIPTION,
    UndefinedGeometryError,
    build_heatmap_parametric_map,
    orientation_cosines,
)
from tests.dicom_node.conftest import assessed, make_dx, not_assessed

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture
def source() -> Dataset:
    """A 200 x 160 DX view: not square, so rows and columns cannot be swapped unnoticed."""
    return make_dx(
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        rows=200,
        columns=160,
    )


@pytest.fixture
def finding(source: Dataset) -> ImageFinding:
    return assessed(source.SOPInstanceUID, "wrist", 0.8, region_probability=0.95)


def _heatmap(rows: int = 200, columns: int = 160) -> np.ndarray:
    """A smooth blob peaking at 1.0 in the lower right quarter."""
    r, c = np.mgrid[0:rows, 0:columns]
    blob = np.exp(-(((r - 150) / 20.0) ** 2 + ((c - 120) / 15.0) ** 2))
    return (blob / blob.max()).astype(np.float32)


def _build(
    source: Dataset, heatmap: np.ndarray, finding: ImageFinding, new: NewInstance | None = None
) -> hd.pm.ParametricMap:
    algorithm = AlgorithmIdentity(
        "fracture-wrist-densenet", "1.2.0", trained_on_synthetic_data=True
    )
    new = new or NewInstance.new_series(9005)
    return build_heatmap_parametric_map(source, heatmap, finding, algorithm, new)


def test_parametric_map_is_valid_and_holds_the_heatmap_on_the_source_grid(
    tmp_path: Path,
    source: Dataset,
    finding: ImageFinding,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    heatmap = _heatmap()
    path = tmp_path / "pm.dcm"
    _build(source, heatmap, finding).save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)

    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    assert pm.SOPClassUID == PARAMETRIC_MAP
    assert (pm.StudyInstanceUID, pm.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert pm.SeriesInstanceUID != source.SeriesInstanceUID
    assert pm.SeriesDescription == PM_SERIES_DESCRIPTION
    assert pm.ImageComments == AI_RESULT_DISCLAIMER
    assert (pm.Rows, pm.Columns, pm.NumberOfFrames) == (200, 160, 1)
    assert "FloatPixelData" not in pm and pm.BitsAllocated == 16  # no float data needed
    np.testing.assert_allclose(pm.pixel_array / 65535, heatmap, atol=1 / 65535)

    shared = pm.SharedFunctionalGroupsSequence[0]
    (mapping,) = shared.RealWorldValueMappingSequence
    assert mapping.LUTExplanation == GRAD_CAM_LABEL
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert mapping.RealWorldValueSlope == pytest.approx(1 / 65535)
    assert mapping.RealWorldValueIntercept == 0.0
    assert mapping.RealWorldValueLastValueMapped == 65535
    voi = shared.FrameVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (32767.5, 65535.0)

    # Tied to the source: same grid, per-frame derivation and series references.
    derivation = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    referenced = pm.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    ours = [
        item
        for item in pm.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == "fracture-wrist-densenet"
    ]
    assert len(ours) == 1 and ours[0].SoftwareVersions == "1.2.0"


def test_projection_gets_its_own_frame_of_reference_and_the_source_orientation(
    source: Dataset, finding: ImageFinding
) -> None:
    """DX has no Frame of Reference: the map's own, the same for every map of the view."""
    assert "FrameOfReferenceUID" not in source
    first = _build(source, _heatmap(), finding)
    second = _build(source, _heatmap(), finding)
    assert "FrameOfReferenceUID" not in source  # the caller's dataset is not changed
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    other = make_dx(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=source.SeriesInstanceUID,
        sop_instance_uid=generate_uid(),
        rows=200,
        columns=160,
    )
    other_finding = assessed(other.SOPInstanceUID, "wrist", 0.1)
    assert _build(other, _heatmap(), other_finding).FrameOfReferenceUID != (
        first.FrameOfReferenceUID
    )

    shared = first.SharedFunctionalGroupsSequence[0]
    # Patient Orientation A\F: rows run anterior, columns to the feet (LPS).
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert orientation == [0.0, -1.0, 0.0, 0.0, 0.0, -1.0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.1, 0.1]
    assert "SliceThickness" not in measures  # a projection has no slice


def test_imager_pixel_spacing_is_used_without_pixel_spacing(
    source: Dataset, finding: ImageFinding
) -> None:
    assert "PixelSpacing" not in source
    source.ImagerPixelSpacing = [0.143, 0.15]
    pm = _build(source, _heatmap(), finding)
    measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.143, 0.15]


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (["L", "F"], (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),
        (["P", "H"], (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)),
        (["AL", "F"], (math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0, 0.0, -1.0)),
    ],
)
def test_orientation_cosines(orientation: list[str], expected: tuple[float, ...]) -> None:
    assert orientation_cosines(orientation) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "orientation",
    [None, [], ["L"], ["L", "R"], ["L", "LF"], ["X", "F"], ["LL", "F"], ["LR", "F"]],
)
def test_unusable_orientation_is_refused(orientation: object) -> None:
    with pytest.raises(UndefinedGeometryError):
        orientation_cosines(orientation)


def test_view_without_orientation_or_spacing_gets_no_map(
    source: Dataset, finding: ImageFinding
) -> None:
    """A made-up orientation would label the map's sides wrongly in a viewer."""
    source.PatientOrientation = None
    with pytest.raises(UndefinedGeometryError, match="Patient Orientation"):
        _build(source, _heatmap(), finding)
    source.PatientOrientation = ["A", "F"]
    del source.ImagerPixelSpacing
    with pytest.raises(UndefinedGeometryError, match="Pixel Spacing"):
        _build(source, _heatmap(), finding)


@pytest.mark.parametrize(
    ("heatmap", "message"),
    [
        (np.zeros((160, 200), np.float32), r"shape \(160, 200\)"),
        (np.zeros((100, 40), np.float32), "not the aspect"),
        (np.zeros((200, 160), np.uint8), "must be float"),
        (np.full((200, 160), 1.5, np.float32), r"not within \[0, 1\]"),
        (np.full((200, 160), -0.1, np.float32), r"not within \[0, 1\]"),
        (np.full((200, 160), np.nan, np.float32), "not finite"),
    ],
    ids=["transposed", "aspect", "integer", "above-one", "negative", "nan"],
)
def test_bad_heatmap_is_refused(
    source: Dataset, finding: ImageFinding, heatmap: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _build(source, heatmap, finding)


def test_unassessed_view_and_wrong_finding_are_refused(source: Dataset) -> None:
    unassessed = not_assessed(source.SOPInstanceUID)
    with pytest.raises(ValueError, match="not assessed"):
        _build(source, _heatmap(), unassessed)
    other = assessed("1.2.3.4", "wrist", 0.5)
    with pytest.raises(ValueError, match=re.escape("1.2.3.4")):
        _build(source, _heatmap(), other)


def test_source_series_is_refused(source: Dataset, finding: ImageFinding) -> None:
    with pytest.raises(ValueError, match=re.escape(source.SeriesInstanceUID)):
        _build(
            source, _heatmap(), finding, NewInstance(source.SeriesInstanceUID, generate_uid(), 1)
        )


def test_a_large_view_gets_a_map_at_most_512_wide_with_the_geometry_scaled(
    tmp_path: Path, dciodvfy_clean: Callable[[Path], str]
) -> None:
    """A 3000 x 2500 CR: the map is 512 x 427, each of its pixels spans ~5.9 source pixels,
    and the heat's peak lands at the same place on the patient."""
    big = make_dx(
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        rows=3000,
        columns=2500,
    )
    big.ImagerPixelSpacing = [0.1, 0.12]
    r, c = np.mgrid[0:3000, 0:2500]
    heatmap = np.exp(-(((r - 2100) / 150.0) ** 2 + ((c - 700) / 120.0) ** 2)).astype(np.float32)
    pm = _build(big, heatmap, assessed(big.SOPInstanceUID, "wrist", 0.8))
    path = tmp_path / "pm.dcm"
    pm.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)
    assert (pm.Rows, pm.Columns) == (512, 427)
    assert path.stat().st_size < 600_000, "not 30 MB of float32 at the source's size"

    shared = pm.SharedFunctionalGroupsSequence[0]
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    assert row_spacing == pytest.approx(0.1 * 3000 / 512)
    assert column_spacing == pytest.approx(0.12 * 2500 / 427)
    first = np.array(
        pm.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient,
        dtype=float,
    )
    along_row, along_column = np.array([0, -1.0, 0]), np.array([0, 0, -1.0])  # A\F
    # The map's outer edge is the source's: its first pixel's corner is the source's.
    corner = first - along_row * column_spacing / 2 - along_column * row_spacing / 2
    source_corner = -along_row * 0.12 / 2 - along_column * 0.1 / 2
    np.testing.assert_allclose(corner, source_corner, atol=1e-5)
    peak_row, peak_column = np.unravel_index(np.argmax(pm.pixel_array), pm.pixel_array.shape)
    where = first + along_row * peak_column * column_spacing + along_column * peak_row * row_spacing
    expected = along_row * 700 * 0.12 + along_column * 2100 * 0.1
    np.testing.assert_allclose(where, expected, atol=max(row_spacing, column_spacing))

    # A heatmap already on a coarse grid of the same aspect is taken as it is.
    coarse = heatmap[::10, ::10]
    again = _build(big, coarse, assessed(big.SOPInstanceUID, "wrist", 0.8))
    assert (again.Rows, again.Columns) == (300, 250)
