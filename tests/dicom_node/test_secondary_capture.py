"""The annotated view Secondary Capture: band above the radiograph, heatmap on positive views
only and on an absolute scale, legend, references, compression and dciodvfy validity."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from config.domain.findings import AlgorithmIdentity, BoundingBox, ImageFinding, OperatingPoints
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING
from dicom_node.outputs.drawing import banner_lines, jet, render_view, text_band
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.secondary_capture import (
    ANNOTATED_HEATMAP_SERIES_DESCRIPTION,
    ANNOTATED_SERIES_DESCRIPTION,
    build_annotated_view,
)
from tests.dicom_node.builders import blob
from tests.dicom_node.conftest import assessed, not_assessed

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
POINTS = OperatingPoints(suspected=0.3, likely=0.7)
BOX = BoundingBox(100, 100, 160, 170)


def _display(source: Dataset) -> np.ndarray:
    """A smooth grey ramp the size of the source (no colour anywhere)."""
    rows, columns = int(source.Rows), int(source.Columns)
    return np.linspace(0.1, 0.9, rows * columns, dtype=np.float32).reshape(rows, columns)


def _view(source: Dataset, probability: float, box: BoundingBox | None = BOX) -> ImageFinding:
    return assessed(source.SOPInstanceUID, "wrist", probability, box, points=POINTS)


def _build(
    source: Dataset,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    *,
    cam: np.ndarray | None = None,
    **kw: object,
) -> Dataset:
    new = NewInstance.new_series(9002)
    return build_annotated_view(source, _display(source), finding, algorithm, new, cam=cam, **kw)


def _band_rows(sc: Dataset, source: Dataset) -> int:
    return int(sc.Rows) - int(source.Rows)


def _colour(rgb: np.ndarray) -> np.ndarray:
    """How far each pixel is from grey (0 for the radiograph, > 0 for heat and box)."""
    return rgb.max(axis=-1).astype(int) - rgb.min(axis=-1).astype(int)


@pytest.mark.parametrize("synthetic", [False, True], ids=["real-data", "synthetic-data"])
def test_annotated_view_is_valid_and_keeps_every_radiograph_pixel_below_its_band(
    tmp_path: Path,
    dx_image: Dataset,
    algorithm: AlgorithmIdentity,
    synthetic: bool,
    dciodvfy_clean: Callable[[Path], str],
) -> None:
    algorithm = dataclasses.replace(algorithm, trained_on_synthetic_data=synthetic)
    sc = _build(dx_image, _view(dx_image, 0.9), algorithm, cam=blob(256, 256))
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    dciodvfy_clean(path)

    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert sc.StudyInstanceUID == dx_image.StudyInstanceUID
    assert sc.SeriesInstanceUID != dx_image.SeriesInstanceUID
    assert sc.SeriesDescription == ANNOTATED_HEATMAP_SERIES_DESCRIPTION
    assert (sc.PatientName, sc.PatientID) == (dx_image.PatientName, dx_image.PatientID)
    assert (sc.BurnedInAnnotation, sc.ImageComments) == ("YES", AI_RESULT_DISCLAIMER)
    # RGB coded with JPEG 2000's reversible colour transform.
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("YBR_RCT", 3)
    assert sc.Columns == dx_image.Columns
    band = _band_rows(sc, dx_image)
    assert 0 < band < dx_image.Rows // 2
    for sequence in (sc.SourceImageSequence, sc.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == dx_image.SOPInstanceUID

    pixels = sc.pixel_array
    plain = render_view(_display(dx_image))
    below = pixels[band:]
    changed = np.any(below != plain, axis=-1)
    rows, columns = np.nonzero(changed)
    # Only the heat and the box differ from the radiograph, all around the finding.
    assert changed.any()
    assert rows.min() >= 40 and rows.max() <= 216 and columns.min() >= 40 and columns.max() <= 216
    assert np.array_equal(below[:40], plain[:40]) and np.array_equal(below[217:], plain[217:])
    # The band is dark with bright text, and the warning in yellow when synthetic
    # (seen on a negative view's band, which has no colour legend).
    top = pixels[:band]
    assert (top.max(axis=2) > 200).sum() > 50 and (top.max(axis=2) < 30).sum() > 50
    negative = _build(dx_image, _view(dx_image, 0.1), algorithm)
    top = negative.pixel_array[: _band_rows(negative, dx_image)]
    yellow = (top[..., 0] > 200) & (top[..., 1] > 150) & (top[..., 2] < 80)
    assert bool(yellow.any()) == synthetic


def test_a_negative_view_gets_a_plain_copy_without_heat_box_or_legend(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    sc = _build(dx_image, _view(dx_image, 0.1), algorithm, cam=blob(256, 256))
    assert sc.SeriesDescription == ANNOTATED_SERIES_DESCRIPTION
    pixels = sc.pixel_array
    band = _band_rows(sc, dx_image)
    np.testing.assert_array_equal(pixels[band:], render_view(_display(dx_image)))
    assert not _colour(pixels[:band]).any(), "no legend: the band is black and white only"
    assert "no marks" in sc.DerivationDescription


def test_heat_is_on_an_absolute_scale_weighted_by_the_probability(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    cam = blob(256, 256)  # the same map, its own maximum 1, for both views
    hot = _build(dx_image, _view(dx_image, 0.95, box=None), algorithm, cam=cam)
    cool = _build(dx_image, _view(dx_image, 0.35, box=None), algorithm, cam=cam)
    images = [sc.pixel_array[_band_rows(sc, dx_image) :].astype(int) for sc in (hot, cool)]
    centre = [image[128, 128] for image in images]
    # At the peak: heat 0.95 is red (red over blue), heat 0.35 is blue-cyan (blue over red).
    assert centre[0][0] - centre[0][2] > 40 and centre[1][2] - centre[1][0] > 10
    # The cooler view is also fainter and covers less of the image.
    assert (_colour(images[1].astype(np.uint8)) > 0).sum() < (
        _colour(images[0].astype(np.uint8)) > 0
    ).sum()
    assert jet(np.array([0.95]))[0, 0] > jet(np.array([0.35]))[0, 0]


def test_the_legend_is_drawn_only_with_a_heatmap(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    with_heat = _build(dx_image, _view(dx_image, 0.9), algorithm, cam=blob(256, 256))
    without = _build(dx_image, _view(dx_image, 0.9), algorithm)
    bands = [sc.pixel_array[: _band_rows(sc, dx_image)] for sc in (with_heat, without)]
    assert _colour(bands[0]).max() > 200, "the colour bar"
    assert not _colour(bands[1]).any()
    assert without.SeriesDescription == ANNOTATED_SERIES_DESCRIPTION
    assert "finding box" in without.DerivationDescription


def test_a_view_not_assessed_gets_no_annotated_copy(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    with pytest.raises(ValueError, match="was not assessed"):
        _build(dx_image, not_assessed(dx_image.SOPInstanceUID), algorithm)


def test_every_lossless_syntax_keeps_the_same_pixels(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    pictures = []
    for syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian):
        sc = _build(
            dx_image,
            _view(dx_image, 0.9),
            algorithm,
            cam=blob(256, 256),
            transfer_syntax_uid=syntax,
        )
        assert sc.file_meta.TransferSyntaxUID == syntax
        pictures.append(sc.pixel_array)
    for picture in pictures[1:]:
        np.testing.assert_array_equal(picture, pictures[0])
    with pytest.raises(ValueError, match="not one of"):
        _build(dx_image, _view(dx_image, 0.9), algorithm, transfer_syntax_uid="1.2.840.10008.1.2")


def test_source_orientation_and_laterality_are_kept(
    dx_image: Dataset, algorithm: AlgorithmIdentity
) -> None:
    dx_image.PatientOrientation = ["AL", "F"]
    sc = _build(dx_image, _view(dx_image, 0.9), algorithm)
    assert list(sc.PatientOrientation) == ["AL", "F"]
    assert sc.Laterality == "L"
    dx_image.ImageLaterality = "B"
    assert _build(dx_image, _view(dx_image, 0.9), algorithm).Laterality == ""


def test_band_scales_with_image_width_and_wraps_on_narrow_images() -> None:
    lines = [AI_RESULT_DISCLAIMER, "wrist: fracture suspected (p=0.83)"]
    heights = [text_band(lines, columns).shape[0] for columns in (512, 2048)]
    assert heights[1] > 3 * heights[0]
    assert heights[1] >= 100, "about 1/40 of a 2048-pixel width per line"
    narrow = text_band([SYNTHETIC_DATA_WARNING], 120)
    assert narrow.shape[1] == 120 and narrow.shape[0] > 2 * 10, "wrapped at 10 pixels"


def test_banner_lines(algorithm: AlgorithmIdentity, synthetic_algorithm: AlgorithmIdentity) -> None:
    finding = assessed("1.2.3", "wrist", 0.834, points=OperatingPoints(suspected=0.5, likely=0.9))
    assert banner_lines(finding, algorithm) == [
        AI_RESULT_DISCLAIMER,
        "wrist: fracture suspected (p=0.83)",
        "model: fracture-wrist-densenet 1.2.0",
    ]
    lines = banner_lines(not_assessed("1.2.3"), synthetic_algorithm)
    assert lines[1].startswith("Not assessed for fracture: stage 1 recognises none")
    assert lines[-1] == SYNTHETIC_DATA_WARNING


def test_inputs_are_checked(dx_images: list[Dataset], algorithm: AlgorithmIdentity) -> None:
    source, other = dx_images
    with pytest.raises(ValueError, match=r"needs \(256, 256\)"):
        build_annotated_view(
            source,
            np.zeros((128, 256), np.float32),
            _view(source, 0.9),
            algorithm,
            NewInstance.new_series(9002),
        )
    with pytest.raises(ValueError, match=other.SOPInstanceUID):
        _build(source, _view(other, 0.9), algorithm)
    with pytest.raises(ValueError, match="outside"):
        build_annotated_view(
            source,
            np.full((256, 256), 2.0, np.float32),
            _view(source, 0.9),
            algorithm,
            NewInstance.new_series(9002),
        )
