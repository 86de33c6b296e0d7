"""Which box each view's annotated Secondary Capture gets: dotted, solid or none."""

from __future__ import annotations

import numpy as np
import pytest

from config import FractureLevel
from config.domain.findings import BoundingBox, ImageFinding
from flows.triage.flow import overlay_box
from models.runtime.overlay import BOX_COLOUR, render_overlay

BOX = BoundingBox(row_min=20, col_min=30, row_max=80, col_max=120)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (FractureLevel.LIKELY, ((20, 30, 80, 120), False)),
        (FractureLevel.SUSPECTED, ((20, 30, 80, 120), True)),
        (FractureLevel.NOT_SUSPECTED, (None, False)),
    ],
)
def test_box_style_follows_the_level(level: FractureLevel, expected: tuple) -> None:
    image = ImageFinding("1.2.3", "wrist", 0.9, 0.5, level, BOX)
    assert overlay_box(image) == expected


def test_unsupported_view_gets_no_box() -> None:
    assert overlay_box(ImageFinding("1.2.3", None, 0.4)) == (None, False)


def test_dotted_and_solid_boxes_differ_on_the_pixels() -> None:
    display = np.full((128, 160), 0.5, dtype=np.float32)
    fills = {}
    for level in (FractureLevel.LIKELY, FractureLevel.SUSPECTED):
        box, dotted = overlay_box(ImageFinding("1.2.3", "wrist", 0.9, 0.5, level, BOX))
        rgb = render_overlay(display, None, box, dotted=dotted)
        top = np.all(rgb[20, 30:121] == BOX_COLOUR, axis=-1)
        fills[level] = top.mean()
    assert fills[FractureLevel.LIKELY] == 1.0
    assert 0.3 < fills[FractureLevel.SUSPECTED] < 0.7
