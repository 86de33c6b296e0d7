"""Which box each view's annotated Secondary Capture gets: dotted, solid or none."""

from __future__ import annotations

import numpy as np
import pytest

from config import FractureLevel
from config.domain.findings import BoundingBox, OperatingPoints
from flows.triage.assemble import overlay_box
from models.runtime.overlay import BOX_COLOUR, render_overlay
from tests.dicom_node.conftest import assessed, not_assessed

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
    points = OperatingPoints(suspected=0.5, likely=0.9)
    probability = {FractureLevel.LIKELY: 0.95, FractureLevel.SUSPECTED: 0.6}.get(level, 0.1)
    image = assessed("1.2.3", "wrist", probability, BOX, points=points)
    assert image.level is level
    assert overlay_box(image) == expected


def test_unsupported_view_gets_no_box() -> None:
    assert overlay_box(not_assessed("1.2.3")) == (None, False)


def test_dotted_and_solid_boxes_differ_on_the_pixels() -> None:
    display = np.full((128, 160), 0.5, dtype=np.float32)
    fills = {}
    points = OperatingPoints(suspected=0.5, likely=0.9)
    for probability in (0.95, 0.6):  # likely, then suspected
        image = assessed("1.2.3", "wrist", probability, BOX, points=points)
        box, dotted = overlay_box(image)
        rgb = render_overlay(display, None, box, dotted=dotted)
        top = np.all(rgb[20, 30:121] == BOX_COLOUR, axis=-1)
        fills[image.level] = top.mean()
    assert fills[FractureLevel.LIKELY] == 1.0
    assert 0.3 < fills[FractureLevel.SUSPECTED] < 0.7
