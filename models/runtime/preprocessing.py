"""One preprocessing for training and inference: display rendering, fit to square, normalise.

Why 8-bit PNGs and 12-16 bit DICOM end up in the same distribution
-------------------------------------------------------------------
Public training sets such as MURA ship radiographs as 8-bit PNGs that were *already
rendered for display*: the modality LUT, the VOI window chosen by the technologist and
the MONOCHROME1 inversion were applied before export, so bone is bright and the useful
intensity range fills 0-255. A PACS sends the raw 12-16 bit stored values plus the
instructions to render them. If the model saw stored values at inference it would meet
a different intensity scale (and sometimes inverted polarity) than in training.

So every image first goes through *display rendering* to a float image in [0, 1], bone
bright: :func:`display_image_from_dataset` applies the same steps a viewer applies
(Modality LUT, VOI LUT or window, MONOCHROME1 inversion) and :func:`display_image_from_png`
just divides the already-rendered PNG by 255. After that both sources are "what a
radiologist saw", and the rest of the pipeline (:func:`preprocessing_transform`) is
identical: aspect-preserving resize and padding to a square (:class:`FitToSquare`, which
also returns the :class:`Geometry` needed to map boxes and heatmaps back to source
pixels), then per-image standardisation (:class:`StandardizeIntensity`, zero mean and
unit standard deviation) which removes what is left of brightness/contrast differences
between sites and windows.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.transforms import Compose, MapTransform, NormalizeIntensity, Transform
from monai.utils import convert_to_numpy
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from torch.nn import functional

logger = logging.getLogger(__name__)

#: Percentiles of the robust window used when a dataset has no VOI LUT and no window.
ROBUST_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Key of the geometry that :class:`FitToSquared` adds to the data dictionary.
GEOMETRY_KEY = "geometry"


def _to_unit_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError(f"non-finite intensity range ({low}, {high})")
    if high <= low:
        # A constant image carries no contrast; render it black rather than dividing by zero.
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _has_voi(ds: pydicom.Dataset) -> bool:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        return True
    return "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowWidth is not None


def display_image_from_dataset(ds: pydicom.Dataset) -> np.ndarray:
    """Render a single-frame grayscale DICOM image as a viewer would, bone bright.

    Parameters
    ----------
    ds
        A dataset with Pixel Data (native or compressed, e.g. JPEG 2000).

    Returns
    -------
    numpy.ndarray
        float32 array of shape (Rows, Columns) in [0, 1]; high values are dense (bone).

    Raises
    ------
    ValueError
        If the dataset has no pixel data, is not grayscale (SamplesPerPixel != 1,
        PhotometricInterpretation not MONOCHROME1/2) or has more than one frame.
    """
    if "PixelData" not in ds:
        raise ValueError("dataset has no PixelData")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise ValueError(f"SamplesPerPixel is {samples}; only grayscale (1) is supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"PhotometricInterpretation {photometric!r} is not MONOCHROME1 or MONOCHROME2"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"NumberOfFrames is {frames}; only single-frame images are supported")

    stored = ds.pixel_array
    if stored.ndim != 2:
        raise ValueError(f"pixel array has shape {stored.shape}; expected (rows, columns)")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)

    if _has_voi(ds):
        # apply_voi_lut uses the first window / VOI LUT, as viewers do by default. Its output
        # range depends on the bit depth, rescale and LUT, so probe it with extreme inputs
        # (the window/LUT saturates there) instead of using the image's own min/max, which
        # would stretch the contrast the window chose.
        rendered = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        probe = np.asarray(
            apply_voi_lut(np.array([-1e12, 1e12], dtype=np.float64), ds, index=0),
            dtype=np.float64,
        )
        display = _to_unit_range(rendered, float(probe.min()), float(probe.max()))
    else:
        low, high = np.percentile(values, ROBUST_WINDOW_PERCENTILES)
        display = _to_unit_range(values, float(low), float(high))

    if photometric == "MONOCHROME1":
        # MONOCHROME1: minimum value is white; invert so bone is bright as in MONOCHROME2.
        display = 1.0 - display
    return display.astype(np.float32)


def preprocess_dicom_file(path: str | Path, size: int) -> tuple[np.ndarray, Geometry]:
    """Read a stored DICOM file and make it a model input: the one loader inference uses.

    Parameters
    ----------
    path
        A DICOM file (Part 10) with one grayscale frame.
    size
        Side of the square model input.

    Returns
    -------
    tuple
        What :func:`preprocess` returns for the file's display image.

    Raises
    ------
    Exception
        Whatever makes the file unusable (cannot be parsed, pixel data cannot be
        decoded, not grayscale, non-finite values): the caller reports that view as
        unreadable by its error; nothing is patched up here.
    """
    dataset = pydicom.dcmread(path)
    return preprocess(display_image_from_dataset(dataset), size)


#: File suffixes read as already display-rendered raster images; anything else is DICOM.
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


def display_image_from_file(path: str | Path) -> np.ndarray:
    """A PNG/JPEG (:func:`display_image_from_png`) or a DICOM file
    (:func:`display_image_from_dataset`, as the node renders it), by the file's suffix."""
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return display_image_from_png(path)
    return display_image_from_dataset(pydicom.dcmread(path))


def display_image_from_png(path: str | Path) -> np.ndarray:
    """Load an already display-rendered PNG or JPEG (MURA, FracAtlas) as float32 in [0, 1].

    Parameters
    ----------
    path
        Path to an 8-bit grayscale or RGB(A) image (colour is converted to luminance) or
        a 16-bit grayscale PNG (GRAZPEDWRI-DX), scaled by its full range.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (rows, cols) in [0, 1], bone bright.

    Raises
    ------
    ValueError
        If the image is neither 8 bits per channel nor 16-bit grayscale.
    """
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(image, dtype=np.float32) / 65535.0
        if image.mode not in ("L", "RGB", "RGBA", "LA", "P"):
            raise ValueError(
                f"PNG {path} has mode {image.mode!r}; expected 8-bit grayscale/RGB or 16-bit gray"
            )
        gray = np.asarray(image.convert("L"), dtype=np.float32)
    return gray / 255.0


@dataclass(frozen=True)
class Geometry:
    """How a source image was placed into the size x size model input.

    The source was resized by ``scale`` (model pixels per source pixel) and padded by
    ``pad_top``/``pad_left`` model pixels.

    Attributes
    ----------
    source_rows, source_cols
        Shape of the source (display) image.
    size
        Side of the square model input.
    scale
        Model pixels per source pixel.
    pad_top, pad_left
        Padding before the resized image, in model pixels.
    """

    source_rows: int
    source_cols: int
    size: int
    scale: float
    pad_top: int
    pad_left: int

    @property
    def resized_shape(self) -> tuple[int, int]:
        """Shape of the resized image inside the padding, in model pixels."""
        return _resized_shape(self.source_rows, self.source_cols, self.size)

    def box_to_source(
        self, row_min: float, col_min: float, row_max: float, col_max: float
    ) -> tuple[float, float, float, float]:
        """Map a box from model-input pixel coordinates to source pixel coordinates.

        Parameters
        ----------
        row_min, col_min, row_max, col_max
            Inclusive box corners in model-input pixels.

        Returns
        -------
        tuple of float
            ``(row_min, col_min, row_max, col_max)`` in source pixels, clipped to the image.
        """
        if row_max < row_min or col_max < col_min:
            raise ValueError(f"invalid box ({row_min}, {col_min}, {row_max}, {col_max})")

        def to_source(value: float, pad: int, limit: int) -> float:
            return float(np.clip((value - pad) / self.scale, 0.0, limit - 1.0))

        # Pixel i covers [i, i+1): map the covered extent, then back to inclusive indices.
        top = to_source(row_min, self.pad_top, self.source_rows)
        left = to_source(col_min, self.pad_left, self.source_cols)
        bottom = to_source(row_max + 1 - self.scale, self.pad_top, self.source_rows)
        right = to_source(col_max + 1 - self.scale, self.pad_left, self.source_cols)
        return top, left, max(top, bottom), max(left, right)

    def box_to_model(
        self, row_min: float, col_min: float, row_max: float, col_max: float
    ) -> tuple[float, float, float, float]:
        """Map a box from source pixel coordinates to model-input coordinates (inverse)."""
        return (
            row_min * self.scale + self.pad_top,
            col_min * self.scale + self.pad_left,
            (row_max + 1) * self.scale + self.pad_top - 1,
            (col_max + 1) * self.scale + self.pad_left - 1,
        )

    def map_to_source(self, heatmap: np.ndarray) -> np.ndarray:
        """Crop the padding from a model-input heatmap and resize it to the source shape.

        Parameters
        ----------
        heatmap
            Array of shape (size, size).

        Returns
        -------
        numpy.ndarray
            float32 array of shape (source_rows, source_cols).
        """
        heatmap = np.asarray(heatmap)
        if heatmap.shape != (self.size, self.size):
            raise ValueError(f"heatmap shape {heatmap.shape} is not ({self.size}, {self.size})")
        rows, cols = self.resized_shape
        crop = heatmap[self.pad_top : self.pad_top + rows, self.pad_left : self.pad_left + cols]
        return _resize(crop.astype(np.float32), (self.source_rows, self.source_cols))


def _resized_shape(rows: int, cols: int, size: int) -> tuple[int, int]:
    scale = size / max(rows, cols)
    return max(1, min(size, round(rows * scale))), max(1, min(size, round(cols * scale)))


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape == shape:
        return image.astype(np.float32, copy=True)
    tensor = torch.as_tensor(image, dtype=torch.float32)[None, None]
    # Antialiasing matters when shrinking 3000 px radiographs to ~128-512 px.
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    resized = functional.interpolate(
        tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized[0, 0].numpy()


class FitToSquare(Transform):
    """Resize keeping the aspect ratio so the long side is ``size``, then zero-pad to a square.

    Zero is black in display space (air), so the padding looks like collimation.

    Parameters
    ----------
    size
        Side of the square output.
    """

    def __init__(self, size: int) -> None:
        if size < 8:
            raise ValueError(f"size {size} is too small; need at least 8")
        self.size = size

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:  # type: ignore[override]
        """Fit a (rows, cols) or (1, rows, cols) image; returns ((1, size, size), Geometry)."""
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(f"image shape {array.shape} is not (rows, cols) or (1, rows, cols)")
        source_rows, source_cols = array.shape
        rows, cols = _resized_shape(source_rows, source_cols, self.size)
        pad_top, pad_left = (self.size - rows) // 2, (self.size - cols) // 2
        out = np.zeros((1, self.size, self.size), dtype=np.float32)
        out[0, pad_top : pad_top + rows, pad_left : pad_left + cols] = _resize(array, (rows, cols))
        geometry = Geometry(
            source_rows=source_rows,
            source_cols=source_cols,
            size=self.size,
            scale=self.size / max(source_rows, source_cols),
            pad_top=pad_top,
            pad_left=pad_left,
        )
        return out, geometry


class FitToSquared(MapTransform):
    """Dictionary wrapper of :class:`FitToSquare`; stores the geometry under ``geometry_key``.

    Parameters
    ----------
    keys
        Image key(s); with several keys, the geometry of the last one is stored.
    size
        Side of the square output.
    geometry_key
        Key under which the :class:`Geometry` is stored.
    """

    def __init__(self, keys: Any, size: int, geometry_key: str = GEOMETRY_KEY) -> None:
        super().__init__(keys)
        self.fit = FitToSquare(size)
        self.geometry_key = geometry_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        """Apply :class:`FitToSquare` to each key."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key], out[self.geometry_key] = self.fit(out[key])
        return out


#: Below this standard deviation an image counts as flat and standardises to zeros.
FLAT_IMAGE_STD = 1e-6


class StandardizeIntensity(Transform):
    """Per-image zero mean, unit standard deviation: MONAI's ``NormalizeIntensity``, flat = 0.

    Per-image (not fixed) statistics: display windows differ between sites and between
    8-bit exports and DICOM windows, and per-image standardisation removes the remaining
    global brightness/contrast offset. :class:`monai.transforms.NormalizeIntensity` with its
    defaults does exactly that, except on a constant (blank) image: its float32 mean can be
    one rounding step off the value, leaving a standard deviation of ~1e-8 that it then
    divides by, so a blank image comes out as +-1 everywhere. Such an image maps to zeros
    here, as it always has.
    """

    backend = NormalizeIntensity.backend

    def __init__(self) -> None:
        self.normalize = NormalizeIntensity(dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """Return ``(image - mean) / std`` as a float32 array (zeros for a flat image)."""
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
        if float(tensor.std(correction=0)) < FLAT_IMAGE_STD:
            return np.zeros(tensor.shape, dtype=np.float32)
        return convert_to_numpy(self.normalize(tensor), dtype=np.float32)


class StandardizeIntensityd(MapTransform):
    """Dictionary wrapper of :class:`StandardizeIntensity`."""

    backend = StandardizeIntensity.backend

    def __init__(self, keys: Any) -> None:
        super().__init__(keys)
        self.standardize = StandardizeIntensity()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        """Apply :class:`StandardizeIntensity` to each key."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.standardize(out[key])
        return out


def preprocessing_transform(size: int, keys: str = "image") -> Compose:
    """The one preprocessing pipeline, from a display image in [0, 1] to the model input.

    Parameters
    ----------
    size
        Side of the square model input (the bundle's ``image_size``).
    keys
        Key of the display image in the data dictionary.

    Returns
    -------
    monai.transforms.Compose
        Maps ``{"image": (rows, cols) float in [0, 1]}`` to ``{"image": (1, size, size)
        float32 standardised, "geometry": Geometry}``.
    """
    return Compose([FitToSquared(keys, size), StandardizeIntensityd(keys)])


def preprocess(display: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Run :func:`preprocessing_transform` on one display image.

    Parameters
    ----------
    display
        float array (rows, cols) in [0, 1], bone bright.
    size
        Side of the square model input.

    Returns
    -------
    tuple
        ``(image (1, size, size) float32, Geometry)``.

    Raises
    ------
    ValueError
        If ``display`` is not 2D, not finite, or outside [0, 1].
    """
    array = np.asarray(display)
    if array.ndim != 2:
        raise ValueError(f"display image shape {array.shape} is not (rows, cols)")
    if not np.all(np.isfinite(array)):
        raise ValueError("display image contains non-finite values")
    if array.size and (array.min() < -1e-6 or array.max() > 1 + 1e-6):
        raise ValueError(
            f"display image range [{array.min()}, {array.max()}] is outside [0, 1]; "
            "render it with display_image_from_dataset/png first"
        )
    result = preprocessing_transform(size)({"image": array.astype(np.float32)})
    return np.asarray(result["image"], dtype=np.float32), result[GEOMETRY_KEY]
