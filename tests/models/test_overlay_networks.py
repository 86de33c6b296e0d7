"""Overlay rendering and the network registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.runtime.networks import (
    ARCHITECTURES,
    NetworkSpec,
    build_network,
    gradcam_target_layer,
    resolve_device,
)
from models.runtime.overlay import render_overlay


def test_overlay_heat_and_boxes() -> None:
    display = np.full((40, 60), 0.5, dtype=np.float32)
    cam = np.zeros_like(display)
    cam[10:20, 10:20] = 1.0
    plain = render_overlay(display, None, None, dotted=False)
    assert plain.shape == (40, 60, 3) and plain.dtype == np.uint8
    assert np.all(plain == 128)
    hot = render_overlay(display, cam, None, dotted=False)
    assert hot[15, 15, 0] > hot[15, 15, 2]  # hot = red end of the colormap
    np.testing.assert_array_equal(hot[30, 40], plain[30, 40])  # cold stays plain
    solid = render_overlay(display, None, (5, 5, 30, 50), dotted=False)
    dotted = render_overlay(display, None, (5, 5, 30, 50), dotted=True)
    solid_edge = np.all(solid[5, 5:51] == (255, 255, 0), axis=-1)
    dotted_edge = np.all(dotted[5, 5:51] == (255, 255, 0), axis=-1)
    assert solid_edge.all() and 0 < dotted_edge.sum() < solid_edge.sum()


def test_overlay_rejects_bad_input() -> None:
    display = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        render_overlay(display, np.zeros((5, 5)), None, dotted=False)
    with pytest.raises(ValueError, match="outside"):
        render_overlay(display + 2.0, None, None, dotted=False)


@pytest.mark.parametrize("architecture", ["densenet-small", "efficientnet-b0"])
def test_registry_builds_single_channel_networks(architecture: str) -> None:
    spec = NetworkSpec(architecture=architecture, out_channels=3)
    net = build_network(spec).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    assert gradcam_target_layer(spec) in dict(net.named_modules())


def test_registry_rejects_unknown_architecture() -> None:
    assert "densenet121" in ARCHITECTURES
    with pytest.raises(ValidationError, match="resnet"):
        NetworkSpec(architecture="resnet", out_channels=2)


def test_device_auto_follows_the_hardware_and_cuda_without_a_gpu_is_refused() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' requested but CUDA is not available"):
            resolve_device("cuda:0")
