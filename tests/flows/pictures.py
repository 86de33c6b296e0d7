"""Pictures of the outputs a browser cannot show: a GSPS applied to its view, a Parametric Map.

Orthanc's viewers neither apply presentation states nor display float images, and
dcmtk's ``dcmp2pgm`` applies a GSPS's VOI but draws no graphics. These helpers
render both from the objects' own content, as a GSPS-aware viewer would, so the
README can show them; they read what the node wrote and change nothing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import highdicom as hd
import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

#: Long side of the rendered view in screen pixels.
SIDE = 768


def render_gsps(source: Dataset, gsps: Dataset) -> Image.Image:
    """The source view as the GSPS presents it: its VOI and LUT shape, boxes and texts.

    A box with Line Dashing Style ``DASHED`` is drawn dashed (its Line Pattern,
    one bit per screen pixel), else solid, in its Pattern On colour.
    """
    values = apply_modality_lut(source.pixel_array, source).astype(np.float64)
    voi = gsps.SoftcopyVOILUTSequence[0]
    centre, width = float(voi.WindowCenter), float(voi.WindowWidth)
    grey = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if gsps.get("PresentationLUTShape") == "INVERSE":
        grey = 1.0 - grey
    rows, columns = grey.shape
    scale = SIDE / max(rows, columns)
    image = Image.fromarray(np.round(grey * 255).astype(np.uint8)).convert("RGB")
    size = (round(columns * scale), round(rows * scale))
    image = image.resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    for annotation in gsps.GraphicAnnotationSequence:
        referenced = annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        if referenced != source.SOPInstanceUID:
            continue
        for graphic in annotation.get("GraphicObjectSequence", []):
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2) * scale
            style = graphic.LineStyleSequence[0]
            colour = hd.color.CIELabColor.from_dicom_value(style.PatternOnColorCIELabValue)
            pattern = int(style.LinePattern) if style.LineDashingStyle == "DASHED" else None
            for start, end in itertools.pairwise(points):
                _line(
                    draw, start, end, colour.to_rgb(clip=True), round(style.LineThickness), pattern
                )
        for text in annotation.get("TextObjectSequence", []):
            left, top = (float(v) * scale for v in text.BoundingBoxTopLeftHandCorner)
            draw.text((left, top), text.UnformattedTextValue, fill=(255, 230, 0), font=font)
    return image


def _line(
    draw: ImageDraw.ImageDraw,
    start: np.ndarray,
    end: np.ndarray,
    colour: tuple[int, int, int],
    width: int,
    pattern: int | None,
) -> None:
    length = float(np.hypot(*(end - start)))
    if pattern is None or length == 0:
        draw.line([tuple(start), tuple(end)], fill=colour, width=width)
        return
    step = (end - start) / length
    for pixel in range(int(length)):
        if pattern >> (31 - pixel % 32) & 1:  # most significant bit first
            a, b = start + step * pixel, start + step * (pixel + 1)
            draw.line([tuple(a), tuple(b)], fill=colour, width=width)


def render_parametric_map(source: Dataset, parametric_map: Dataset, path: Path) -> None:
    """The source view beside the map's real-world values (colour bar labelled by the map)."""
    pm = hd.pm.ParametricMap.from_dataset(parametric_map)
    values = pm.pixel_array.astype(np.float64)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    values = values * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    display = apply_modality_lut(source.pixel_array, source).astype(np.float64)
    figure = Figure(figsize=(8, 4), dpi=100)  # no pyplot: no GUI backend, no global state
    left, right = figure.subplots(1, 2)
    left.imshow(display, cmap="gray")
    left.set_title("source view")
    shown = right.imshow(values, cmap="inferno", vmin=0.0, vmax=1.0)
    right.set_title(f"Parametric Map: {mapping.LUTExplanation}")
    unit = mapping.MeasurementUnitsCodeSequence[0]
    figure.colorbar(shown, ax=right, label=f"{mapping.LUTLabel} ({unit.CodeMeaning})")
    for axes in (left, right):
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)
