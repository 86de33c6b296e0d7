"""Initialisation from a local checkpoint (``train --init-weights PATH``).

A site that wants ImageNet or RadImageNet weights downloads them itself and passes the
file: the node and the toolkit never download anything at run time. Tensors are copied by
name where the shapes match; a first convolution made for three colour channels is summed
over them to fit the single grey channel (the same response to a grey image); the
classifier, made for other classes, is left as initialised. torchvision's DenseNet names
(``denselayer1.norm1``) are mapped to MONAI's (``denselayer1.layers.norm1``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: torchvision's dense layer parameter names, without MONAI's ``layers.`` level.
_TORCHVISION_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.(?!layers\.)(\w+?)\.?(\d*)\.(\w+)$")


@dataclass(frozen=True)
class InitialWeights:
    """What a checkpoint gave a network: tensors copied, adapted to one channel, unused."""

    copied: int
    adapted: tuple[str, ...]
    unused: tuple[str, ...]


def load_initial_weights(network: nn.Module, path: Path) -> InitialWeights:
    """Copy the matching tensors of the checkpoint at ``path`` into ``network``.

    Raises
    ------
    ValueError
        When nothing in the file fits the network (another architecture, or not a state
        dict), naming the file and a few of the names it holds.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint around the weights
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (a {type(state).__name__})")
    target = network.state_dict()
    copied, adapted, unused = 0, [], []
    for raw_name, tensor in state.items():
        name = _monai_name(str(raw_name).removeprefix("module."))
        want = target.get(name)
        if want is None or not isinstance(tensor, torch.Tensor):
            unused.append(str(raw_name))
        elif tensor.shape == want.shape:
            target[name], copied = tensor.to(want.dtype), copied + 1
        elif _colour_convolution_for_grey(tensor, want):
            target[name] = tensor.sum(dim=1, keepdim=True).to(want.dtype)
            adapted.append(name)
        else:
            unused.append(str(raw_name))
    if not copied and not adapted:
        sample = ", ".join(list(map(str, state))[:3])
        raise ValueError(f"nothing in {path} fits the network (it holds {sample}, ...)")
    network.load_state_dict(target)
    return InitialWeights(copied, tuple(adapted), tuple(unused))


def _monai_name(name: str) -> str:
    """torchvision's ``...denselayer1.norm1.weight`` (or ``norm.1``) -> MONAI's name."""
    match = _TORCHVISION_DENSE_LAYER.match(name)
    if match is None:
        return name
    layer, module, number, field = match.groups()
    return f"{layer}.layers.{module}{number}.{field}"


def _colour_convolution_for_grey(tensor: torch.Tensor, want: torch.Tensor) -> bool:
    return (
        tensor.ndim == 4
        and want.ndim == 4
        and tensor.shape[1] == 3
        and want.shape[1] == 1
        and tensor.shape[0] == want.shape[0]
        and tensor.shape[2:] == want.shape[2:]
    )
