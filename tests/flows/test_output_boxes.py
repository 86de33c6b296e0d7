"""Which box each view's annotated Secondary Capture gets: dotted, solid or none."""

from __future__ import annotations

import numpy as np
import pytest

from config import FractureLevel
from config.domain.findings import AlgorithmIdentity, BoundingBox, OperatingPoints
from dicom_node.outputs.drawing import BOX_COLOUR, annotated_picture
from tests.dicom_node.conftest import assessed, not_assessed

BOX = BoundingBox(row_min=20, col_min=30, row_max=80, col_max=120)
POINTS = OperatingPoints(suspected=0.5, likely=0.9)
ALGORITHM = AlgorithmIdentity("fracture-demo", "0.1.0")
DISPLAY = np.full((128, 160), 0.5, dtype=np.float32)


def _top_edge_fill(probability: float) -> float:
    """The share of the box's top edge drawn in the box colour (1: solid, 0: none)."""
    image = assessed("1.2.3", "wrist", probability, BOX, points=POINTS)
    picture = annotated_picture(DISPLAY, image, ALGORITHM)
    view = picture.rgb[picture.band_rows :]
    return float(np.all(view[20, 30:121] == BOX_COLOUR, axis=-1).mean())


@pytest.mark.parametrize(
    ("probability", "level"),
    [
        (0.95, FractureLevel.LIKELY),
        (0.6, FractureLevel.SUSPECTED),
        (0.1, FractureLevel.NOT_SUSPECTED),
    ],
)
def test_box_style_follows_the_level(probability: float, level: FractureLevel) -> None:
    assert POINTS.level(probability) is level
    fill = _top_edge_fill(probability)
    if level is FractureLevel.LIKELY:
        assert fill == 1.0
    elif level is FractureLevel.SUSPECTED:
        assert 0.3 < fill < 0.7, "dotted"
    else:
        assert fill == 0.0, "a negative view gets no box"


def test_unsupported_view_gets_no_picture() -> None:
    with pytest.raises(ValueError, match="not assessed"):
        annotated_picture(DISPLAY, not_assessed("1.2.3"), ALGORITHM)
