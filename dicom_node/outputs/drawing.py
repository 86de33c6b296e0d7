"""Drawing the pictures the node sends: annotated views and their banner, pure NumPy + Pillow.

An annotated view is the radiograph as its VOI renders it (every pixel kept), under
a dark band ADDED above it that carries the result text and, where a heatmap is
drawn, the heatmap's colour legend. Over the radiograph: the Grad-CAM heatmap, only
on views at or above the "suspected" operating point, and the finding's box (dotted:
suspected, solid: likely).

The heatmap is on an absolute scale: its heat is Grad-CAM's map (0 to 1, its own
maximum 1) times the view's fracture probability, and the colours and opacity
follow that product on a fixed 0-1 scale. A view at p = 0.3 is therefore cooler
and fainter than one at p = 0.9, whatever the map's own maximum; heat under
:data:`HEAT_FLOOR` is not drawn, so cold areas keep the plain radiograph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from config.domain.findings import AlgorithmIdentity, ImageFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER, SYNTHETIC_DATA_WARNING, FractureLevel
from dicom_node.outputs.sources import check_types
from dicom_node.outputs.wording import not_assessed_sentence, probability_text

__all__ = [
    "BAND_COLOUR",
    "BOX_COLOUR",
    "HEAT_FLOOR",
    "MAX_ALPHA",
    "AnnotatedPicture",
    "annotated_picture",
    "banner_lines",
    "draw_box",
    "evidence_heat",
    "font",
    "jet",
    "render_view",
    "text_band",
    "wrap_text",
]

logger = logging.getLogger(__name__)

#: Heat (Grad-CAM x probability) below this is not drawn.
HEAT_FLOOR = 0.2
#: Opacity of the heatmap at heat 1.
MAX_ALPHA = 0.5
BOX_COLOUR = np.array([255, 255, 0], dtype=np.uint8)
BAND_COLOUR = (0, 0, 0)
_TEXT_COLOUR = (255, 255, 255)
_WARNING_COLOUR = (255, 214, 0)
#: Font size as a fraction of the image width before fitting the longest line.
_FONT_SIZE_PER_WIDTH = 1 / 40
#: Smallest font size in pixels: below it, lines wrap instead of shrinking.
_MIN_FONT_SIZE = 10

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class AnnotatedPicture:
    """An annotated view: the RGB picture, its band's height, whether a heatmap is drawn."""

    rgb: np.ndarray  # (band_rows + rows, columns, 3) uint8
    band_rows: int
    heatmap_drawn: bool


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: [0, 1] -> float RGB in [0, 1] (blue, cyan, yellow, red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)


def evidence_heat(cam: np.ndarray, probability: float) -> np.ndarray:
    """The absolute heat of a view: Grad-CAM's map (0-1) times its fracture probability."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"fracture probability {probability} is not in [0, 1]")
    return np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0) * np.float32(probability)


def draw_box(
    rgb: np.ndarray, box: tuple[float, float, float, float], dotted: bool, thickness: int
) -> None:
    """Draw ``(row_min, col_min, row_max, col_max)`` into ``rgb`` in place (dashed if dotted)."""
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


def render_view(
    display: np.ndarray,
    heat: np.ndarray | None = None,
    box: tuple[float, float, float, float] | None = None,
    dotted: bool = False,
) -> np.ndarray:
    """The radiograph in RGB with the heat blended in and the box drawn.

    Parameters
    ----------
    display
        float (H, W) in [0, 1], bone bright (the source as its VOI renders it).
    heat
        float (H, W) in [0, 1] on the absolute scale (:func:`evidence_heat`), or None.
    box
        ``(row_min, col_min, row_max, col_max)`` in source pixels, or None.
    dotted
        Draw the box dashed ("suspected") instead of solid ("likely").

    Raises
    ------
    ValueError
        If the shapes differ or the values are outside [0, 1].
    """
    display = _unit_interval(display, "display")
    if display.ndim != 2:
        raise ValueError(f"display shape {display.shape} is not (H, W)")
    grey = np.round(display * 255.0).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=-1)
    if heat is not None:
        heat = _unit_interval(heat, "heat")
        if heat.shape != display.shape:
            raise ValueError(f"heat shape {heat.shape} differs from display shape {display.shape}")
        alpha = MAX_ALPHA * np.clip((heat - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)
        hot = alpha > 0  # pixels outside the heat keep the radiograph's exact grey
        blended = (1.0 - alpha[hot, None]) * display[hot, None] + alpha[hot, None] * jet(heat[hot])
        out[hot] = np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
    if box is not None:
        draw_box(out, box, dotted, max(1, round(max(display.shape) / 256)))
    return out


def banner_lines(finding: ImageFinding, algorithm: AlgorithmIdentity) -> list[str]:
    """The band's text: disclaimer, result, model and, for synthetic training, the warning."""
    check_types(finding=(finding, ImageFinding), algorithm=(algorithm, AlgorithmIdentity))
    if finding.not_assessed is not None:
        result = not_assessed_sentence(finding.not_assessed)
    else:
        assert finding.level is not None and finding.fracture_probability is not None
        probability = probability_text(finding.fracture_probability)
        result = f"{finding.region}: {finding.level.value} (p={probability})"
    lines = [AI_RESULT_DISCLAIMER, result, f"model: {algorithm.name} {algorithm.version}"]
    if algorithm.trained_on_synthetic_data:
        lines.append(SYNTHETIC_DATA_WARNING)
    return lines


def annotated_picture(
    display: np.ndarray,
    finding: ImageFinding,
    algorithm: AlgorithmIdentity,
    cam: np.ndarray | None = None,
) -> AnnotatedPicture:
    """The annotated view of an assessed image: band above, heat and box over the image.

    The heatmap is drawn only when ``cam`` is given and the view is positive; the
    box only on a positive view.
    """
    if finding.not_assessed is not None:
        raise ValueError(f"image {finding.sop_instance_uid} was not assessed: no annotated view")
    assert finding.fracture_probability is not None
    heat = None
    if cam is not None and finding.is_positive:
        heat = evidence_heat(cam, finding.fracture_probability)
    box = finding.box.as_tuple() if finding.is_positive and finding.box is not None else None
    view = render_view(display, heat, box, dotted=finding.level is FractureLevel.SUSPECTED)
    band = text_band(banner_lines(finding, algorithm), view.shape[1], legend=heat is not None)
    return AnnotatedPicture(np.concatenate([band, view]), band.shape[0], heat is not None)


def text_band(lines: list[str], columns: int, *, legend: bool = False) -> np.ndarray:
    """A dark band ``columns`` wide holding ``lines`` (and the heat legend), as tall as needed.

    The font size scales with the width (about 1/40 of it) and shrinks until the
    longest line fits, down to 10 pixels; lines that still do not fit wrap at
    spaces. A line equal to the synthetic-data warning is drawn in yellow.
    """
    if not lines:
        raise ValueError("lines is empty: a banner needs at least one line")
    if columns < 1:
        raise ValueError(f"a band needs at least one column, got {columns}")
    margin = max(2, columns // 100)
    room = columns - 2 * margin
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(_MIN_FONT_SIZE, round(columns * _FONT_SIZE_PER_WIDTH))
    while size > _MIN_FONT_SIZE and _widest(measure, lines, font(size)) > room:
        size -= 1
    wrapped = [
        (part, line == SYNTHETIC_DATA_WARNING)
        for line in lines
        for part in wrap_text(measure, line, font(size), room)
    ]
    line_height = round(size * 1.25)
    legend_rows = 2 * line_height if legend else 0
    image = Image.new(
        "RGB", (columns, 2 * margin + line_height * len(wrapped) + legend_rows), BAND_COLOUR
    )
    draw = ImageDraw.Draw(image)
    for number, (text, warning) in enumerate(wrapped):
        colour = _WARNING_COLOUR if warning else _TEXT_COLOUR
        draw.text((margin, margin + number * line_height), text, fill=colour, font=font(size))
    if legend:
        _draw_legend(image, margin + line_height * len(wrapped), margin, size)
    return np.asarray(image, dtype=np.uint8).copy()


def _draw_legend(image: Image.Image, top: int, margin: int, size: int) -> None:
    """The heat scale: a 0-1 colour bar (blank under the floor) and what it measures."""
    draw = ImageDraw.Draw(image)
    small = font(max(_MIN_FONT_SIZE, round(size * 0.8)))
    label = "heat = Grad-CAM x probability: 0 "
    x = margin + round(draw.textlength(label, font=small))
    width = max(8, min(image.width // 3, image.width - x - margin - round(size * 1.5)))
    scale = np.linspace(0.0, 1.0, width, dtype=np.float32)
    colours = np.round(jet(scale) * 255).astype(np.uint8)
    colours[scale < HEAT_FLOOR] = 0  # not drawn on the image either
    bar_height = max(2, round(size * 0.8))
    bar = np.repeat(colours[None], bar_height, axis=0)
    image.paste(Image.fromarray(bar), (x, top + (size - bar_height) // 2 + margin // 2))
    draw.text((margin, top + margin // 2), label, fill=_TEXT_COLOUR, font=small)
    draw.text((x + width + 4, top + margin // 2), "1", fill=_TEXT_COLOUR, font=small)


@lru_cache(maxsize=64)
def font(size: int) -> Font:
    """Pillow's bundled font at `size` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, AttributeError):  # pragma: no cover - Pillow without FreeType
        logger.warning("FreeType unavailable: text drawn with Pillow's small bitmap font")
        return ImageFont.load_default()


def _unit_interval(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
        raise ValueError(f"{name} values are outside [0, 1] (or not finite)")
    return array


def _widest(draw: ImageDraw.ImageDraw, lines: list[str], typeface: Font) -> float:
    return max(draw.textlength(line, font=typeface) for line in lines)


def wrap_text(draw: ImageDraw.ImageDraw, line: str, typeface: Font, room: float) -> list[str]:
    """Split `line` at spaces into parts at most `room` pixels wide (a long word stays whole)."""
    parts: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and draw.textlength(candidate, font=typeface) > room:
            parts.append(current)
            current = word
        else:
            current = candidate
    parts.append(current)
    return parts
