"""MONAI-bundle-style model directories: read, write and load them into a model.

Layout (the MONAI Bundle specification's, see :mod:`models.runtime.monai_spec`)::

    <bundle>/configs/metadata.json   the specification's keys; BundleMetadata under
                                     "fracture_triage"
    <bundle>/configs/inference.json  one image through the bundle (python -m monai.bundle run)
    <bundle>/models/model.pt         {"region": state_dict, "fracture": {region: state_dict},
                                      "pixel_gate": state_dict (when the metadata has one)};
                                     a shared-backbone bundle has {"shared": state_dict}
                                     instead of "region" and "fracture"
    <bundle>/docs/README.md          model card

Networks are described as data (:class:`models.runtime.networks.NetworkSpec`), never as code
strings, and weights are loaded with ``torch.load(weights_only=True)``, so opening a
bundle executes nothing from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from models.runtime.detection import FractureDetector, build_detector
from models.runtime.inference import HierarchicalModel
from models.runtime.metadata import (
    METADATA_FILE,
    MODEL_CARD_FILE,
    WEIGHTS_FILE,
    BundleMetadata,
    OperatingPoints,
    model_card,
)
from models.runtime.monai_spec import INFERENCE_CONFIG, INFERENCE_FILE, our_keys, spec_metadata
from models.runtime.networks import SharedStages, build_network
from models.runtime.ood import FeatureDistance

__all__ = [
    "METADATA_FILE",
    "MODEL_CARD_FILE",
    "WEIGHTS_FILE",
    "BundleError",
    "BundleMetadata",
    "OperatingPoints",
    "load_bundle",
    "load_metadata",
    "save_bundle",
    "update_metadata",
]

logger = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle directory is incomplete or inconsistent; the message names what is wrong."""


def save_bundle(
    path: Path,
    metadata: BundleMetadata,
    region_model: nn.Module,
    fracture_models: dict[str, nn.Module] | None,
    pixel_gate: FeatureDistance | None = None,
    type_network: nn.Module | None = None,
    detector: nn.Module | None = None,
) -> Path:
    """Write a bundle directory.

    Parameters
    ----------
    path
        Bundle directory (created if needed; existing files are overwritten).
    metadata
        The bundle metadata.
    region_model
        Stage-1 network; of a shared-backbone bundle, its
        :class:`~models.runtime.networks.SharedStages`.
    fracture_models
        Stage-2 network per region; keys must be exactly ``metadata.regions``. None for a
        shared-backbone bundle.
    pixel_gate
        The out-of-distribution statistics; given exactly when ``metadata.pixel_gate`` is.
    type_network
        The type head; given exactly when ``metadata.type_network`` is.
    detector
        The detector's network (``FractureDetector.network``); given exactly when
        ``metadata.detector`` is.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    optional = {"pixel_gate": pixel_gate, "type": type_network, "detector": detector}
    weights = _stage_weights(metadata, region_model, fracture_models)
    _check_parts(metadata, optional)
    for sub in (METADATA_FILE, WEIGHTS_FILE, MODEL_CARD_FILE):
        (path / sub).parent.mkdir(parents=True, exist_ok=True)
    weights |= {key: _on_cpu(part) for key, part in optional.items() if part is not None}
    torch.save(weights, path / WEIGHTS_FILE)
    _write_metadata(path, metadata)
    (path / INFERENCE_FILE).write_text(json.dumps(INFERENCE_CONFIG, indent=2) + "\n")
    logger.info("saved bundle %s %s to %s", metadata.name, metadata.version, path)
    return path


def _stage_weights(
    metadata: BundleMetadata,
    region_model: nn.Module,
    fracture_models: dict[str, nn.Module] | None,
) -> dict[str, Any]:
    """The two stages' weights, or BundleError unless the networks are the metadata's form."""
    if metadata.shared_backbone:
        if not isinstance(region_model, SharedStages) or fracture_models is not None:
            raise BundleError(
                "a shared-backbone bundle takes one SharedStages network and no fracture models"
            )
        return {"shared": _on_cpu(region_model.network)}
    if fracture_models is None or set(fracture_models) != set(metadata.regions):
        raise BundleError(
            f"fracture models for {sorted(fracture_models or {})} do not match regions "
            f"{sorted(metadata.regions)}"
        )
    return {
        "region": _on_cpu(region_model),
        "fracture": {region: _on_cpu(model) for region, model in fracture_models.items()},
    }


def _check_parts(metadata: BundleMetadata, optional: dict[str, nn.Module | None]) -> None:
    """Raise BundleError unless the optional parts are exactly those the metadata describes."""
    described = {
        "pixel_gate": ("pixel gate's statistics", metadata.pixel_gate),
        "type": ("type head's network", metadata.type_network),
        "detector": ("detector's network", metadata.detector),
    }
    for key, part in optional.items():
        name, spec = described[key]
        if (part is None) != (spec is None):
            raise BundleError(f"the {name} and its metadata go together")


def _on_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def update_metadata(path: Path, **updates: Any) -> BundleMetadata:
    """Rewrite a bundle's metadata with ``updates`` (validated) and regenerate its model card.

    Parameters
    ----------
    path
        Bundle directory.
    **updates
        Metadata fields to replace, e.g. ``metrics=...``.

    Returns
    -------
    BundleMetadata
        The new metadata.
    """
    path = Path(path)
    current = load_metadata(path)
    try:
        metadata = BundleMetadata.model_validate({**current.model_dump(), **updates})
    except ValidationError as error:
        raise BundleError(f"metadata update for {path} is invalid: {error}") from error
    _write_metadata(path, metadata)
    return metadata


def _write_metadata(path: Path, metadata: BundleMetadata) -> None:
    """The metadata file (in the MONAI specification's terms) and the model card."""
    (path / METADATA_FILE).write_text(json.dumps(spec_metadata(metadata), indent=2) + "\n")
    (path / MODEL_CARD_FILE).write_text(model_card(metadata))


def load_metadata(path: Path) -> BundleMetadata:
    """Read and validate ``<bundle>/configs/metadata.json``.

    Raises
    ------
    BundleError
        If the file is missing, not JSON, or a field is missing/invalid (named).
    """
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise BundleError(f"bundle {path} has no {METADATA_FILE}")
    try:
        return BundleMetadata.model_validate(our_keys(json.loads(file.read_text())))
    except json.JSONDecodeError as error:
        raise BundleError(f"{file} is not valid JSON: {error}") from error
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()
        )
        raise BundleError(f"{file} is invalid: {problems}") from error


def _load_state(network: nn.Module, state: Any, what: str) -> nn.Module:
    if not isinstance(state, dict):
        raise BundleError(f"{WEIGHTS_FILE}: {what} weights are not a state dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise BundleError(
            f"{WEIGHTS_FILE}: {what} weights do not fit the network: {error}"
        ) from error
    return network


def load_bundle(
    path: Path, device: str | torch.device = "cpu", max_batch: int | None = None
) -> HierarchicalModel:
    """Load a bundle directory into a ready :class:`~models.runtime.inference.HierarchicalModel`.

    Parameters
    ----------
    path
        Bundle directory.
    device
        Torch device for the networks.
    max_batch
        Images per forward pass (None: the device's default, see HierarchicalModel).

    Returns
    -------
    HierarchicalModel
        Networks in eval mode on ``device``.

    Raises
    ------
    BundleError
        Naming the missing file or the missing/invalid field.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist")
    metadata = load_metadata(path)
    weights_file = path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise BundleError(f"bundle {path} has no {WEIGHTS_FILE}")
    if not (path / MODEL_CARD_FILE).is_file():
        raise BundleError(f"bundle {path} has no {MODEL_CARD_FILE} (model card)")
    weights = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not isinstance(weights, dict):
        raise BundleError(f"{weights_file} must hold a dict of weights")
    region_net, fracture_nets = _stage_networks(metadata, weights)
    return HierarchicalModel(
        metadata,
        region_net,
        fracture_nets,
        device=device,
        max_batch=max_batch,
        feature_distance=_pixel_gate(metadata, weights),
        type_network=_type_network(metadata, weights),
        detector=_detector(metadata, weights),
    )


def _stage_networks(
    metadata: BundleMetadata, weights: dict[str, Any]
) -> tuple[nn.Module, dict[str, nn.Module] | None]:
    """Stage 1's network and stage 2's per region, or a shared-backbone bundle's one."""
    if metadata.shared_backbone:
        if "shared" not in weights:
            raise BundleError(f"{WEIGHTS_FILE} has no 'shared' weights for a shared backbone")
        network = _load_state(build_network(metadata.region_network), weights["shared"], "shared")
        return SharedStages(network, metadata.regions), None
    if "region" not in weights or "fracture" not in weights:
        raise BundleError(f"{WEIGHTS_FILE} must hold a dict with keys 'region' and 'fracture'")
    missing = [region for region in metadata.regions if region not in weights["fracture"]]
    if missing:
        raise BundleError(f"{WEIGHTS_FILE} has no fracture weights for regions {missing}")
    region_net = _load_state(build_network(metadata.region_network), weights["region"], "region")
    fracture_nets = {
        region: _load_state(
            build_network(metadata.fracture_network), weights["fracture"][region], region
        )
        for region in metadata.regions
    }
    return region_net, fracture_nets


def _detector(metadata: BundleMetadata, weights: dict[str, Any]) -> FractureDetector | None:
    """The fracture detector, when the metadata has one."""
    if metadata.detector is None:
        return None
    if "detector" not in weights:
        raise BundleError(f"{WEIGHTS_FILE} has no detector weights for the metadata's detector")
    detector = build_detector(metadata.detector)
    _load_state(detector.network, weights["detector"], "detector")
    return detector


def _type_network(metadata: BundleMetadata, weights: dict[str, Any]) -> nn.Module | None:
    """The type head, when the metadata has one."""
    if metadata.type_network is None:
        return None
    if "type" not in weights:
        raise BundleError(f"{WEIGHTS_FILE} has no type weights for the metadata's type head")
    return _load_state(build_network(metadata.type_network), weights["type"], "type")


def _pixel_gate(metadata: BundleMetadata, weights: dict[str, Any]) -> FeatureDistance | None:
    """The out-of-distribution statistics the metadata's pixel gate measures against."""
    if metadata.pixel_gate is None:
        return None
    state = weights.get("pixel_gate")
    if not isinstance(state, dict) or not {"means", "precision"} <= state.keys():
        raise BundleError(f"{WEIGHTS_FILE} has no pixel_gate statistics (means, precision)")
    try:
        return FeatureDistance(state["means"], state["precision"])
    except ValueError as error:
        raise BundleError(f"{WEIGHTS_FILE}: pixel_gate statistics: {error}") from error
