"""Grad-CAM maps are hot where the evidence is (not inverted), and the hot box."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from models.runtime.gradcam import CamExplainer, compute_cam, hottest_box
from models.runtime.networks import NetworkSpec, build_network, gradcam_target_layer


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


def test_efficientnet_explains_its_last_feature_map_and_trains_a_step() -> None:
    spec = NetworkSpec(architecture="efficientnet-b0", out_channels=1)
    torch.manual_seed(0)
    net = build_network(spec)
    images = torch.randn(4, 1, 96, 96)
    # EfficientNet's batch norm tracks running statistics with momentum 0.01: untrained (or
    # after a few steps) eval mode still uses the initial ones and the head's activations
    # vanish (~1e-13). A long run settles them; here they are settled on the batch.
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(images)
    net.eval()

    # The target layer runs once per forward, on the last feature map (input / 32) before
    # pooling; the shared '_swish' module runs for the stem and the head, so it would not do.
    modules = dict(net.named_modules())
    calls: dict[str, list[tuple[int, ...]]] = {"target": [], "_swish": []}
    hooks = [
        modules[gradcam_target_layer(spec)].register_forward_hook(
            lambda _m, _i, out: calls["target"].append(tuple(out.shape))
        ),
        modules["_swish"].register_forward_hook(
            lambda _m, _i, out: calls["_swish"].append(tuple(out.shape))
        ),
    ]
    with torch.no_grad():
        net(images[:1])
    for hook in hooks:
        hook.remove()
    assert calls["target"] == [(1, 1280, 3, 3)]
    assert len(calls["_swish"]) > 1

    maps = CamExplainer(net, gradcam_target_layer(spec))(images[:2], 0)
    assert maps.shape == (2, 96, 96) and maps.dtype == np.float32
    assert maps.min() >= 0.0
    assert maps.reshape(2, -1).max(axis=1) == pytest.approx([1.0, 1.0])  # each map has a peak
    assert 0.02 < float((maps > 0.5).mean()) < 0.9  # a hot area, not the whole image

    # It trains: one AdamW step moves the stem and the classifier (the explainer worked on
    # a copy, so the network has no hooks left).
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    loss = nn.BCEWithLogitsLoss()(net(images), torch.tensor([[0.0], [1.0], [0.0], [1.0]]))
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(before[k], v)]
    assert "_fc.weight" in changed and "_conv_stem.weight" in changed


def _component_box(mask: np.ndarray, seed: tuple[int, int]) -> tuple[int, int, int, int]:
    # Breadth-first search over the 8 neighbours: the textbook connected component.
    seen, queue = {seed}, [seed]
    while queue:
        row, col = queue.pop()
        for dr, dc in itertools.product((-1, 0, 1), repeat=2):
            r, c = row + dr, col + dc
            inside = 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]
            if inside and mask[r, c] and (r, c) not in seen:
                seen.add((r, c))
                queue.append((r, c))
    rows, cols = zip(*seen, strict=True)
    return min(rows), min(cols), max(rows), max(cols)


def test_hottest_box_is_the_eight_connected_component_of_the_maximum() -> None:
    rng = np.random.default_rng(6)
    for _ in range(40):
        cam = rng.uniform(size=(int(rng.integers(4, 40)), int(rng.integers(4, 40))))
        seed = np.unravel_index(int(np.argmax(cam)), cam.shape)
        expected = _component_box(cam >= 0.5 * cam.max(), (int(seed[0]), int(seed[1])))
        assert hottest_box(cam, 0.5) == expected
    # Diagonal contact joins (8-connectivity), a one-pixel gap does not.
    cam = np.zeros((6, 6))
    cam[0, 0], cam[1, 1], cam[2, 2], cam[4, 4] = 1.0, 0.9, 0.8, 0.9
    assert hottest_box(cam, 0.5) == (0, 0, 2, 2)
