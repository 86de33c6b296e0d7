"""Heatmap overlays for secondary-capture images: pure NumPy + Pillow."""

from __future__ import annotations

import numpy as np

#: Heat below this is not drawn, so cold areas keep the plain radiograph.
HEAT_FLOOR = 0.2
#: Maximum opacity of the heatmap.
MAX_ALPHA = 0.5
BOX_COLOUR = np.array([255, 255, 0], dtype=np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: [0, 1] -> float RGB in [0, 1] (blue, cyan, yellow, red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)


def _draw_box(
    rgb: np.ndarray, box: tuple[float, float, float, float], dotted: bool, thickness: int
) -> None:
    height, width = rgb.shape[:2]
    r0, c0, r1, c1 = (round(v) for v in box)
    r0, r1 = max(0, min(r0, height - 1)), max(0, min(r1, height - 1))
    c0, c1 = max(0, min(c0, width - 1)), max(0, min(c1, width - 1))
    if r1 < r0 or c1 < c0:
        raise ValueError(f"invalid box {box}")
    dash = max(2, 3 * thickness)

    def keep(n: int) -> np.ndarray:
        idx = np.arange(n)
        return (idx // dash) % 2 == 0 if dotted else np.ones(n, dtype=bool)

    cols = np.arange(c0, c1 + 1)[keep(c1 - c0 + 1)]
    rows = np.arange(r0, r1 + 1)[keep(r1 - r0 + 1)]
    for t in range(thickness):
        for r in (min(r0 + t, height - 1), max(r1 - t, 0)):
            rgb[r, cols] = BOX_COLOUR
        for c in (min(c0 + t, width - 1), max(c1 - t, 0)):
            rgb[rows, c] = BOX_COLOUR


def render_overlay(
    display: np.ndarray,
    cam: np.ndarray | None,
    box: tuple[float, float, float, float] | None,
    dotted: bool,
) -> np.ndarray:
    """Grayscale radiograph with a Grad-CAM heatmap blended in and a box drawn.

    Parameters
    ----------
    display
        float (H, W) in [0, 1], bone bright.
    cam
        float (H, W) in [0, 1] in the same (source) coordinates, or None for no heatmap.
    box
        ``(row_min, col_min, row_max, col_max)`` in source pixels, or None.
    dotted
        Draw the box dashed (e.g. "suspected") instead of solid (e.g. "likely").

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) RGB.

    Raises
    ------
    ValueError
        If the shapes differ or the values are outside [0, 1].
    """
    display = np.asarray(display, dtype=np.float32)
    if display.ndim != 2:
        raise ValueError(f"display shape {display.shape} is not (H, W)")
    if display.size and (display.min() < 0.0 or display.max() > 1.0):
        raise ValueError(f"display range [{display.min()}, {display.max()}] is outside [0, 1]")
    rgb = np.repeat(display[..., None], 3, axis=-1)
    if cam is not None:
        cam = np.asarray(cam, dtype=np.float32)
        if cam.shape != display.shape:
            raise ValueError(f"cam shape {cam.shape} differs from display shape {display.shape}")
        if cam.size and (cam.min() < 0.0 or cam.max() > 1.0):
            raise ValueError(f"cam range [{cam.min()}, {cam.max()}] is outside [0, 1]")
        alpha = MAX_ALPHA * np.clip((cam - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)
        rgb = (1.0 - alpha[..., None]) * rgb + alpha[..., None] * jet(cam)
    out = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    if box is not None:
        thickness = max(1, round(max(display.shape) / 256))
        _draw_box(out, box, dotted, thickness)
    return out
