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


def shared_outputs(regions: int) -> int:
    """Outputs of a :class:`SharedStages` network over ``regions`` regions: stage 1's
    classes (the regions and 'unsupported'), a fracture logit per region, one common to all."""
    return (regions + 1) + regions + 1


class SharedStages(nn.Module):
    """One network for both stages (a bundle's ``shared_backbone`` form), so one forward
    pass gives a view's region and every region's fracture logit.

    Its outputs (:func:`shared_outputs`) are stage 1's ``classes`` logits, then one per
    region, then one common to all regions; a region's fracture logit is its own plus the
    common one, so what every region's breaks share is learnt from all of them (as the
    two-network form's stage 2 starts from one network trained on every region).

    Parameters
    ----------
    network
        The network, with :func:`shared_outputs` outputs.
    regions
        The regions, in stage 1's order ('unsupported' follows them) and in the order of
        their fracture logits.
    """

    def __init__(self, network: nn.Module, regions: tuple[str, ...]) -> None:
        super().__init__()
        if not regions:
            raise ValueError("a shared network needs at least one region")
        self.network = network
        self.classes = len(regions) + 1  # stage 1's: the regions and 'unsupported'
        self.regions = regions

    def forward(self, images: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """All logits (N, :func:`shared_outputs`); with ``columns`` (N,) of
        :meth:`fracture_column` each image's own region's fracture logit, (N, 1): Grad-CAM
        then explains that logit for each image."""
        logits = self.network(images)
        if columns is None:
            return logits
        return logits.gather(1, columns.to(logits.device)[:, None]) + logits[:, -1:]

    def fracture_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Every region's fracture logit (N, regions) from :meth:`forward`'s logits."""
        return fracture_logits(logits, self.classes, len(self.regions))

    @staticmethod
    def layer_name(name: str) -> str:
        """The name of the shared network's layer ``name`` among this module's modules."""
        return f"network.{name}"

    def fracture_column(self, region: str) -> int:
        """Output index of ``region``'s own fracture logit (the common one is added)."""
        if region not in self.regions:
            raise ValueError(f"no fracture logit for region {region!r}; expected {self.regions}")
        return self.classes + self.regions.index(region)

    def region_view(self) -> nn.Module:
        """Stage 1 as a network of its own: the region logits (the same weights)."""
        return _RegionView(self)

    def fracture_view(self, region: str) -> nn.Module:
        """``region``'s stage 2 as a network of its own: its (N, 1) fracture logit."""
        return _FractureView(self, self.fracture_column(region))


def fracture_logits(logits: torch.Tensor, classes: int, regions: int) -> torch.Tensor:
    """Each region's fracture logit (N, regions) from a :class:`SharedStages` network's
    logits: its own plus the common one."""
    return logits[:, classes : classes + regions] + logits[:, classes + regions :]


class _RegionView(nn.Module):
    """Stage 1's logits of a :class:`SharedStages`, so training, calibration and
    evaluation use either form the same way. Its weights are the shared network's."""

    def __init__(self, shared: SharedStages) -> None:
        super().__init__()
        self.shared = shared

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.shared(images)[:, : self.shared.classes]


class _FractureView(nn.Module):
    """One region's (N, 1) fracture logit of a :class:`SharedStages` (as :class:`_RegionView`)."""

    def __init__(self, shared: SharedStages, column: int) -> None:
        super().__init__()
        self.shared = shared
        self.column = column

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        columns = torch.full((images.shape[0],), self.column, dtype=torch.long)
        return self.shared(images, columns=columns)
