"""Starting from a local checkpoint: torchvision's DenseNet names, a colour first layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet121

from models.runtime.bundle import load_bundle
from models.runtime.networks import NetworkSpec, build_network
from models.training.datasets import write_phantom_mura
from models.training.initial_weights import load_initial_weights
from models.training.layouts import load_records
from models.training.train import train
from tests.models.conftest import tiny_train_config


def torchvision_style_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """An ImageNet-shaped DenseNet-121 (3 colour channels, 1000 classes) saved under
    torchvision's parameter names, as a site would download it."""
    colour = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000)
    state = {
        name.replace(".layers.", ".").replace("class_layers.out", "classifier"): tensor
        for name, tensor in colour.state_dict().items()
    }
    torch.save(state, path)
    return state


def test_a_colour_imagenet_checkpoint_starts_a_grey_two_class_network(tmp_path: Path) -> None:
    source = torchvision_style_checkpoint(tmp_path / "densenet121-imagenet.pt")
    network = build_network(NetworkSpec(architecture="densenet121", out_channels=2))
    loaded = load_initial_weights(network, tmp_path / "densenet121-imagenet.pt")
    state = network.state_dict()
    # The colour filters summed over R, G and B: the same response to a grey image.
    assert loaded.adapted == ("features.conv0.weight",)
    assert torch.equal(
        state["features.conv0.weight"], source["features.conv0.weight"].sum(1, keepdim=True)
    )
    assert torch.equal(
        state["features.denseblock3.denselayer7.layers.conv2.weight"],
        source["features.denseblock3.denselayer7.conv2.weight"],
    )
    assert set(loaded.unused) == {"classifier.weight", "classifier.bias"}  # 1000 classes
    assert loaded.copied == len(source) - 3


def test_a_file_that_fits_nothing_is_named(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    network = build_network(NetworkSpec(architecture="densenet-small", out_channels=2))
    with pytest.raises(ValueError, match=r"nothing in .*other\.pt fits the network"):
        load_initial_weights(network, tmp_path / "other.pt")


def test_training_starts_from_the_checkpoint_and_the_card_says_so(tmp_path: Path) -> None:
    records = load_records(write_phantom_mura(tmp_path / "data", (3, 2), size=40, seed=4), "mura")
    start = build_network(NetworkSpec(architecture="densenet-small", out_channels=8))
    torch.save(start.state_dict(), tmp_path / "start.pt")
    config = tiny_train_config(init_weights=tmp_path / "start.pt")
    bundle = train(config, records, tmp_path / "bundle", progress=False)
    assert "started from the weights in start.pt" in load_bundle(bundle).metadata.training_data
