"""Drawing the annotated views: heat blended over the radiograph, boxes (moved from models)."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.outputs.drawing import BOX_COLOUR, evidence_heat, render_view


def test_heat_and_boxes() -> None:
    display = np.full((40, 60), 0.5, dtype=np.float32)
    heat = np.zeros_like(display)
    heat[10:20, 10:20] = 1.0
    plain = render_view(display)
    assert plain.shape == (40, 60, 3) and plain.dtype == np.uint8
    assert np.all(plain == 128)
    hot = render_view(display, heat)
    assert hot[15, 15, 0] > hot[15, 15, 2]  # hot = red end of the colormap
    np.testing.assert_array_equal(hot[30, 40], plain[30, 40])  # cold stays plain
    solid = render_view(display, None, (5, 5, 30, 50), dotted=False)
    dotted = render_view(display, None, (5, 5, 30, 50), dotted=True)
    solid_edge = np.all(solid[5, 5:51] == BOX_COLOUR, axis=-1)
    dotted_edge = np.all(dotted[5, 5:51] == BOX_COLOUR, axis=-1)
    assert solid_edge.all() and 0 < dotted_edge.sum() < solid_edge.sum()


def test_heat_is_weighted_by_the_probability_not_scaled_to_its_maximum() -> None:
    cam = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    np.testing.assert_allclose(evidence_heat(cam, 0.3), cam * 0.3)
    assert evidence_heat(cam, 0.3).max() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="not in"):
        evidence_heat(cam, 1.5)


def test_bad_input_is_refused() -> None:
    display = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        render_view(display, np.zeros((5, 5)), None)
    with pytest.raises(ValueError, match="outside"):
        render_view(display + 2.0)
