"""Network registry: architecture names in config map to plain ``monai.networks.nets`` modules.

Bundles name an architecture from a fixed registry instead of carrying code strings
(``_target_``), so loading a bundle never imports or executes anything it names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import torch
from monai.networks.nets import DenseNet, DenseNet121, DenseNet169, EfficientNetBN
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import nn

logger = logging.getLogger(__name__)


def _densenet121(out_channels: int, **kwargs: Any) -> nn.Module:
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=out_channels, **kwargs)


def _densenet169(out_channels: int, **kwargs: Any) -> nn.Module:
    return DenseNet169(spatial_dims=2, in_channels=1, out_channels=out_channels, **kwargs)


def _densenet_small(out_channels: int, **kwargs: Any) -> nn.Module:
    # Three dense blocks keep an 8x8 feature map at 128 px input: coarse enough to be fast on
    # two CPU cores, fine enough for a Grad-CAM box that points at a fracture line.
    params: dict[str, Any] = {
        "init_features": 16,
        "growth_rate": 12,
        "block_config": (2, 4, 4),
        "bn_size": 2,
    }
    params.update(kwargs)
    return DenseNet(spatial_dims=2, in_channels=1, out_channels=out_channels, **params)


def _efficientnet(model_name: str) -> Callable[..., nn.Module]:
    def build(out_channels: int, **kwargs: Any) -> nn.Module:
        # pretrained=False: weights would come from a hub, and these nodes have no internet.
        return EfficientNetBN(
            model_name,
            pretrained=False,
            spatial_dims=2,
            in_channels=1,
            num_classes=out_channels,
            **kwargs,
        )

    return build


#: Architecture name -> (builder, Grad-CAM target layer).
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str]] = {
    # DenseNet: ``class_layers.relu`` is the last activation before global pooling.
    "densenet121": (_densenet121, "class_layers.relu"),
    "densenet169": (_densenet169, "class_layers.relu"),
    "densenet-small": (_densenet_small, "class_layers.relu"),
    # EfficientNet reuses one ``_swish`` module for stem and head, so hooks on it would mix
    # the two; ``_bn1`` is the head's own last layer before pooling.
    "efficientnet-b0": (_efficientnet("efficientnet-b0"), "_bn1"),
    "efficientnet-b1": (_efficientnet("efficientnet-b1"), "_bn1"),
}

#: Architecture names a :class:`NetworkSpec` may use.
ARCHITECTURES: tuple[str, ...] = tuple(_REGISTRY)


def _known_architecture(value: str) -> str:
    if value not in _REGISTRY:
        raise ValueError(f"unknown architecture {value!r}; choose one of {ARCHITECTURES}")
    return value


#: A field type that accepts only the names in :data:`ARCHITECTURES`.
ArchitectureName = Annotated[str, AfterValidator(_known_architecture)]


class NetworkSpec(BaseModel):
    """A network as data: registry name, number of outputs and builder keyword arguments.

    Parameters
    ----------
    architecture
        One of :data:`ARCHITECTURES`.
    out_channels
        Number of output logits.
    kwargs
        Extra keyword arguments for the MONAI constructor (JSON-serialisable values only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: ArchitectureName
    out_channels: int = Field(ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)


def build_network(spec: NetworkSpec) -> nn.Module:
    """Instantiate the network described by ``spec`` (randomly initialised).

    Parameters
    ----------
    spec
        Architecture, number of outputs and keyword arguments.

    Returns
    -------
    torch.nn.Module
        A 2D, single-channel-input MONAI network.
    """
    builder, _ = _REGISTRY[spec.architecture]
    return builder(spec.out_channels, **spec.kwargs)


def gradcam_target_layer(spec: NetworkSpec) -> str:
    """Name of the module whose activations Grad-CAM should use for ``spec``'s architecture.

    Parameters
    ----------
    spec
        The network specification.

    Returns
    -------
    str
        A name from ``network.named_modules()``.
    """
    return _REGISTRY[spec.architecture][1]


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device
