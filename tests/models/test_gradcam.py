"""Grad-CAM maps are hot where the evidence is (not inverted), and the hot box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.gradcam import CamExplainer, compute_cam, hottest_box
from models.networks import NetworkSpec, build_network, gradcam_target_layer


class _BrightSpotNet(nn.Module):
    """Logit 1 = mean of a 1x1 conv feature map (identity): evidence = bright pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        nn.init.ones_(self.features.weight)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.act(self.features(x)).mean(dim=(1, 2, 3))
        return torch.stack([-score, score], dim=1)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_hot_spot_is_where_the_evidence_is(method: str) -> None:
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 20:26, 4:10] = 1.0
    net = _BrightSpotNet()
    cam = compute_cam(net, image, "act", class_index=1, method=method)[0]
    assert cam.shape == (32, 32) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    assert cam[22, 6] > 0.9 and cam[5, 25] < 0.1  # hot = evidence, not inverted
    assert hottest_box(cam) == (20, 4, 25, 9)
    # The caller's network is left without hooks and with its in-place flags.
    assert not net.act._forward_hooks and not net.act._backward_hooks


def test_explainer_works_on_registry_networks() -> None:
    spec = NetworkSpec(architecture="densenet-small", out_channels=1)
    net = build_network(spec).eval()
    maps = CamExplainer(net, gradcam_target_layer(spec))(torch.randn(2, 1, 64, 64), 0)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    with torch.no_grad():  # Grad-CAM still works inside a caller's no_grad block
        CamExplainer(net, gradcam_target_layer(spec))(torch.randn(1, 1, 64, 64), 0)


def test_unknown_layer_and_method_are_rejected() -> None:
    net = _BrightSpotNet()
    with pytest.raises(ValueError, match="nope"):
        CamExplainer(net, "nope")
    with pytest.raises(ValueError, match="scorecam"):
        CamExplainer(net, "act", method="scorecam")


def test_hottest_box_picks_the_component_with_the_maximum() -> None:
    cam = np.zeros((20, 20))
    cam[2:5, 2:6] = 0.8
    cam[10:15, 12:18] = 0.6
    cam[11, 13] = 1.0
    assert hottest_box(cam, 0.5) == (10, 12, 14, 17)
    assert hottest_box(cam, 0.9) == (11, 13, 11, 13)
    with pytest.raises(ValueError, match="fraction"):
        hottest_box(cam, 0.0)
    with pytest.raises(ValueError, match="2D"):
        hottest_box(np.zeros(5))
