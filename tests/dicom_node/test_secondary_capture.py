"""The overlay Secondary Capture: banner, pixels, references and dciodvfy validity."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, ImageFinding, OperatingPoints, StudyFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.secondary_capture import (
    banner_lines,
    build_overlay_secondary_capture,
    burn_banner,
)
from tests.dicom_node.conftest import assessed, not_assessed

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _overlay(source: Dataset) -> np.ndarray:
    """A mid-grey overlay with a red square (the "heatmap")."""
    overlay = np.full((source.Rows, source.Columns, 3), 128, dtype=np.uint8)
    overlay[150:200, 150:200] = (230, 40, 40)
    return overlay


def _build(
    source: Dataset,
    overlay: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    **overrides: object,
) -> Dataset:
    arguments: dict[str, object] = {
        "series_instance_uid": generate_uid(),
        "sop_instance_uid": generate_uid(),
        "series_number": 901,
        "instance_number": 1,
    }
    arguments.update(overrides)
    return build_overlay_secondary_capture(source, overlay, finding, algorithm, **arguments)


def _changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.any(before != after, axis=(1, 2)))


@pytest.mark.parametrize("synthetic", [False, True], ids=["real-data", "synthetic-data"])
def test_secondary_capture_is_valid(
    tmp_path: Path,
    dx_image: Dataset,
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    synthetic: bool,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    algorithm = dataclasses.replace(algorithm, trained_on_synthetic_data=synthetic)
    overlay = _overlay(dx_image)
    sc = _build(dx_image, overlay, positive_finding.images[0], algorithm)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)

    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.StudyInstanceUID == dx_image.StudyInstanceUID
    assert sc.SeriesInstanceUID != dx_image.SeriesInstanceUID
    assert sc.SeriesDescription.startswith("AI")
    assert sc.PatientName == dx_image.PatientName
    assert sc.PatientID == dx_image.PatientID
    assert sc.Manufacturer == algorithm.manufacturer
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.SamplesPerPixel == 3
    assert (sc.Rows, sc.Columns) == (dx_image.Rows, dx_image.Columns)
    for sequence in (sc.SourceImageSequence, sc.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == dx_image.SOPInstanceUID
        assert sequence[0].ReferencedSOPClassUID == dx_image.SOPClassUID

    pixels = sc.pixel_array
    assert pixels.shape == overlay.shape
    assert pixels.dtype == np.uint8
    changed = _changed_rows(overlay, pixels)
    assert changed.size > 0
    assert changed[0] == 0, "the banner sits at the top"
    banner_height = changed[-1] + 1
    assert banner_height < dx_image.Rows // 2
    # Below the banner the overlay (heatmap included) is unchanged.
    np.testing.assert_array_equal(pixels[banner_height:], overlay[banner_height:])
    # The banner holds text: bright pixels on the dark band.
    band = pixels[:banner_height]
    assert (band.max(axis=2) > 200).sum() > 50
    assert (band.max(axis=2) < 30).sum() > 50
    if synthetic:
        yellow = (band[..., 0] > 200) & (band[..., 1] > 150) & (band[..., 2] < 80)
        assert yellow.any(), "the synthetic-data warning is drawn in yellow"


def test_unsupported_image_gets_a_valid_capture(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    source = dx_images[1]
    sc = _build(source, _overlay(source), positive_finding.images[1], algorithm)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)


def test_source_orientation_and_laterality_are_kept(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    dx_image.PatientOrientation = ["AL", "F"]
    sc = _build(dx_image, _overlay(dx_image), positive_finding.images[0], algorithm)
    assert list(sc.PatientOrientation) == ["AL", "F"]
    assert sc.Laterality == "L"


def test_banner_scales_with_image_width() -> None:
    lines = ["AI result, not for diagnostic use", "wrist: fracture suspected (p=0.83)"]
    heights = []
    for columns in (512, 2048):
        image = np.full((1000, columns, 3), 128, dtype=np.uint8)
        heights.append(_changed_rows(image, burn_banner(image, lines))[-1] + 1)
    assert heights[1] > 3 * heights[0]
    assert heights[1] >= 100, "about 1/40 of a 2048-pixel width per line"


def test_banner_wraps_on_narrow_images() -> None:
    image = np.full((300, 120, 3), 128, dtype=np.uint8)
    burned = burn_banner(image, [SYNTHETIC_DATA_WARNING])
    height = _changed_rows(image, burned)[-1] + 1
    assert height > 2 * 10, "the warning wraps onto several lines at the minimum font size"


def test_banner_lines_positive(algorithm: AlgorithmIdentity) -> None:
    finding = assessed("1.2.3", "wrist", 0.834, points=OperatingPoints(suspected=0.5, likely=0.9))
    assert banner_lines(finding, algorithm) == [
        AI_RESULT_DISCLAIMER,
        "wrist: fracture suspected (p=0.83)",
        "model: fracture-wrist-densenet 1.2.0",
    ]


def test_banner_lines_synthetic_and_unsupported(synthetic_algorithm: AlgorithmIdentity) -> None:
    lines = banner_lines(not_assessed("1.2.3"), synthetic_algorithm)
    assert lines[0] == AI_RESULT_DISCLAIMER
    assert lines[1].startswith("not assessed for fracture: stage 1 recognises none")
    assert lines[2] == "model: fracture-wrist-densenet 0.0.1-synthetic"
    assert lines[-1] == "TRAINED ON SYNTHETIC DATA - NOT FOR CLINICAL USE"


def test_overlay_shape_must_match_source(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    overlay = np.zeros((128, 256, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(128, 256, 3\)"):
        _build(dx_image, overlay, positive_finding.images[0], algorithm)


def test_overlay_must_be_uint8(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    overlay = _overlay(dx_image).astype(np.float64)
    with pytest.raises(ValueError, match="float64"):
        _build(dx_image, overlay, positive_finding.images[0], algorithm)


def test_overlay_must_be_rgb(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    overlay = np.zeros((256, 256), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(256, 256\)"):
        _build(dx_image, overlay, positive_finding.images[0], algorithm)


def test_finding_must_be_for_the_source(
    dx_images: list[Dataset], positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    source = dx_images[1]
    wrong = positive_finding.images[0]
    with pytest.raises(ValueError, match=wrong.sop_instance_uid):
        _build(source, _overlay(source), wrong, algorithm)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("series_instance_uid", "1.2.x", "1.2.x"),
        ("sop_instance_uid", "", "sop_instance_uid"),
        ("series_number", 0, "series_number"),
        ("instance_number", True, "instance_number"),
    ],
)
def test_bad_arguments_are_rejected(
    dx_image: Dataset,
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    keyword: str,
    value: object,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        _build(
            dx_image, _overlay(dx_image), positive_finding.images[0], algorithm, **{keyword: value}
        )


def test_source_series_is_rejected(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    series = dx_image.SeriesInstanceUID
    with pytest.raises(ValueError, match=series):
        _build(
            dx_image,
            _overlay(dx_image),
            positive_finding.images[0],
            algorithm,
            series_instance_uid=series,
        )
