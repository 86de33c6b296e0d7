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
    source: Dataset, heatmap: np.ndarray, finding: ImageFinding, **overrides: object
) -> hd.pm.ParametricMap:
    arguments: dict[str, object] = {
        "series_instance_uid": generate_uid(),
        "sop_instance_uid": generate_uid(),
        "series_number": 9005,
        "instance_number": 1,
    }
    arguments.update(overrides)
    algorithm = AlgorithmIdentity(
        "fracture-wrist-densenet", "1.2.0", trained_on_synthetic_data=True
    )
    return build_heatmap_parametric_map(source, heatmap, finding, algorithm, **arguments)


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
    assert "FloatPixelData" in pm and pm.BitsAllocated == 32
    np.testing.assert_array_equal(pm.pixel_array, heatmap)  # float32 values, unchanged

    shared = pm.SharedFunctionalGroupsSequence[0]
    (mapping,) = shared.RealWorldValueMappingSequence
    assert mapping.LUTExplanation == GRAD_CAM_LABEL
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(1.0)
    voi = shared.FrameVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.5, 1.0)

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
        (np.zeros((200, 160), np.float64), "float32"),
        (np.full((200, 160), 1.5, np.float32), r"not within \[0, 1\]"),
        (np.full((200, 160), -0.1, np.float32), r"not within \[0, 1\]"),
        (np.full((200, 160), np.nan, np.float32), "not finite"),
    ],
    ids=["transposed", "float64", "above-one", "negative", "nan"],
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


def test_source_series_and_bad_numbers_are_refused(source: Dataset, finding: ImageFinding) -> None:
    with pytest.raises(ValueError, match=re.escape(source.SeriesInstanceUID)):
        _build(source, _heatmap(), finding, series_instance_uid=source.SeriesInstanceUID)
    with pytest.raises(ValueError, match="instance_number"):
        _build(source, _heatmap(), finding, instance_number=0)
