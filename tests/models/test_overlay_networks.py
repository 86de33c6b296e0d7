"""The network registry (overlay drawing: tests/dicom_node/test_drawing.py)."""

from __future__ import annotations

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
