"""MONAI-bundle-style model directories: metadata, weights and a model card.

Layout::

    <bundle>/configs/metadata.json   BundleMetadata as JSON
    <bundle>/models/model.pt         {"region": state_dict, "fracture": {region: state_dict}}
    <bundle>/docs/README.md          model card

Networks are described as data (:class:`models.runtime.networks.NetworkSpec`), never as code
strings, and weights are loaded with ``torch.load(weights_only=True)``, so opening a
bundle executes nothing from it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import monai
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from config import REGION_CLASSES, REGIONS
from models.runtime.networks import NetworkSpec, build_network

if TYPE_CHECKING:
    from models.runtime.inference import HierarchicalModel

logger = logging.getLogger(__name__)

METADATA_FILE = Path("configs/metadata.json")
WEIGHTS_FILE = Path("models/model.pt")
MODEL_CARD_FILE = Path("docs/README.md")


class BundleError(ValueError):
    """A bundle directory is incomplete or inconsistent; the message names what is wrong."""


class OperatingPoints(BaseModel):
    """The two per-region thresholds on the fracture probability."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suspected: float = Field(ge=0.0, le=1.0, description="High-sensitivity operating point.")
    likely: float = Field(ge=0.0, le=1.0, description="High-specificity operating point.")

    @model_validator(mode="after")
    def _ordered(self) -> OperatingPoints:
        if self.likely < self.suspected:
            raise ValueError(f"likely ({self.likely}) is below suspected ({self.suspected})")
        return self


class BundleMetadata(BaseModel):
    """What a bundle is, what it was trained on, and how to use its outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str
    intended_use: str
    training_data: str
    trained_on_synthetic_data: bool
    image_size: int = Field(ge=32, description="Side of the square model input (preprocessing).")
    region_network: NetworkSpec
    fracture_network: NetworkSpec
    regions: tuple[str, ...] = REGIONS
    region_min_probability: float = Field(ge=0.0, le=1.0)
    thresholds: dict[str, OperatingPoints]
    study_aggregation: Literal["mean", "max"] = "mean"
    temperatures: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Temperature-scaling calibration per network: key 'region' for stage 1 and a region "
            "name for its fracture network; logits are divided by it. Absent means 1.0."
        ),
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    monai_version: str = monai.__version__
    torch_version: str = torch.__version__

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        # The region network's outputs are REGION_CLASSES in order, so regions must match.
        if tuple(self.regions) != REGIONS:
            raise ValueError(f"regions {self.regions} must be {REGIONS} (network output order)")
        if self.region_network.out_channels != len(REGION_CLASSES):
            raise ValueError(
                f"region_network.out_channels is {self.region_network.out_channels}; "
                f"expected {len(REGION_CLASSES)} ({REGION_CLASSES})"
            )
        if self.fracture_network.out_channels not in (1, 2):
            raise ValueError(
                f"fracture_network.out_channels is {self.fracture_network.out_channels}; "
                "expected 1 (sigmoid) or 2 (softmax)"
            )
        missing = [region for region in self.regions if region not in self.thresholds]
        if missing:
            raise ValueError(f"thresholds missing for regions {missing}")
        unknown = [region for region in self.thresholds if region not in self.regions]
        if unknown:
            raise ValueError(f"thresholds for unknown regions {unknown}")
        allowed = ("region", *self.regions)
        for network, temperature in self.temperatures.items():
            if network not in allowed:
                raise ValueError(f"temperature for unknown network {network!r}; expected {allowed}")
            if not 1e-3 <= temperature <= 1e3:
                raise ValueError(
                    f"temperature {temperature} of {network!r} is outside [0.001, 1000]"
                )
        try:
            datetime.fromisoformat(self.created)
        except ValueError as error:
            raise ValueError(f"created {self.created!r} is not an ISO timestamp") from error
        return self

    def temperature(self, network: str) -> float:
        """Calibration temperature of ``network`` ('region' or a region name); 1.0 if absent."""
        return float(self.temperatures.get(network, 1.0))


def _metric_lines(metrics: dict[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if key in ("figures", "evaluation"):
            continue
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) or "- none"


def _evaluation_section(metadata: BundleMetadata) -> str:
    evaluation = metadata.metrics.get("evaluation")
    figures = metadata.metrics.get("figures") or {}
    if not evaluation and not figures:
        return ""
    parts = ["\n## Evaluation\n"]
    if isinstance(evaluation, dict):
        overall = evaluation.get("overall", {})
        parts.append(f"Data: {evaluation.get('data', 'not recorded')}\n")
        if overall:
            parts.append(
                "| scope | studies | AUROC (95% CI) | sens@suspected | spec@suspected "
                "| sens@likely | spec@likely | kappa@suspected | ECE |"
            )
            parts.append("|---|---|---|---|---|---|---|---|---|")
            for scope, row in [("overall", overall), *evaluation.get("regions", {}).items()]:
                parts.append(
                    f"| {scope} | {row.get('studies')} | {row.get('auroc')} "
                    f"({row.get('auroc_ci')}) | {row.get('sensitivity_suspected')} | "
                    f"{row.get('specificity_suspected')} | {row.get('sensitivity_likely')} | "
                    f"{row.get('specificity_likely')} | {row.get('kappa_suspected')} | "
                    f"{row.get('ece')} |"
                )
            parts.append("")
        for key in (
            "region_accuracy",
            "gradcam_box_hit_rate",
            "gradcampp_box_hit_rate",
            "occlusion_box_hit_rate",
        ):
            if key in evaluation:
                parts.append(f"- {key}: {evaluation[key]}")
    for name, file in figures.items():
        parts.append(f"\n![{name}]({Path(file).relative_to(MODEL_CARD_FILE.parent)})")
    return "\n".join(parts) + "\n"


def _model_card(metadata: BundleMetadata) -> str:
    thresholds = "\n".join(
        f"| {region} | {points.suspected:.3f} | {points.likely:.3f} |"
        for region, points in metadata.thresholds.items()
    )
    metrics = _metric_lines(metadata.metrics)
    temperatures = (
        ", ".join(f"{k} {v:.3f}" for k, v in metadata.temperatures.items()) or "none (1.0)"
    )
    synthetic = (
        "\n**This bundle was trained on synthetic data only. It is NOT for clinical use.**\n"
        if metadata.trained_on_synthetic_data
        else ""
    )
    return f"""# {metadata.name} {metadata.version}
{synthetic}
{metadata.description}

## Intended use

{metadata.intended_use}

## Training data

{metadata.training_data}

## Models

- Input: one display-rendered radiograph, fitted to {metadata.image_size}x{metadata.image_size},
  standardised per image (see `models.runtime.preprocessing`).
- Stage 1 (region): `{metadata.region_network.architecture}`, softmax over {list(REGION_CLASSES)};
  a region below probability {metadata.region_min_probability} counts as unsupported.
- Stage 2 (fracture): one `{metadata.fracture_network.architecture}` per region.
- Study probability: {metadata.study_aggregation} of the image probabilities.
- Calibration (temperature scaling, fitted on the validation split): {temperatures}.
- Explanation: Grad-CAM on the fracture output.

## Operating points

| region | suspected (high sensitivity) | likely (high specificity) |
|---|---|---|
{thresholds}

## Held-out metrics

{metrics}
{_evaluation_section(metadata)}
## Versions

Created {metadata.created} with MONAI {metadata.monai_version}, PyTorch {metadata.torch_version}.
"""


def save_bundle(
    path: Path,
    metadata: BundleMetadata,
    region_model: nn.Module,
    fracture_models: dict[str, nn.Module],
) -> Path:
    """Write a bundle directory.

    Parameters
    ----------
    path
        Bundle directory (created if needed; existing files are overwritten).
    metadata
        The bundle metadata.
    region_model
        Stage-1 network.
    fracture_models
        Stage-2 network per region; keys must be exactly ``metadata.regions``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if set(fracture_models) != set(metadata.regions):
        raise BundleError(
            f"fracture models for {sorted(fracture_models)} do not match regions "
            f"{sorted(metadata.regions)}"
        )
    for sub in (METADATA_FILE, WEIGHTS_FILE, MODEL_CARD_FILE):
        (path / sub).parent.mkdir(parents=True, exist_ok=True)
    weights = {
        "region": {k: v.detach().cpu() for k, v in region_model.state_dict().items()},
        "fracture": {
            region: {k: v.detach().cpu() for k, v in model.state_dict().items()}
            for region, model in fracture_models.items()
        },
    }
    torch.save(weights, path / WEIGHTS_FILE)
    (path / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n")
    (path / MODEL_CARD_FILE).write_text(_model_card(metadata))
    logger.info("saved bundle %s %s to %s", metadata.name, metadata.version, path)
    return path


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
    (path / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n")
    (path / MODEL_CARD_FILE).write_text(_model_card(metadata))
    return metadata


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
        return BundleMetadata.model_validate(json.loads(file.read_text()))
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
    from models.runtime.inference import HierarchicalModel  # inference imports this module

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
    if not isinstance(weights, dict) or "region" not in weights or "fracture" not in weights:
        raise BundleError(f"{weights_file} must hold a dict with keys 'region' and 'fracture'")
    missing = [region for region in metadata.regions if region not in weights["fracture"]]
    if missing:
        raise BundleError(f"{weights_file} has no fracture weights for regions {missing}")
    region_net = _load_state(build_network(metadata.region_network), weights["region"], "region")
    fracture_nets = {
        region: _load_state(
            build_network(metadata.fracture_network), weights["fracture"][region], region
        )
        for region in metadata.regions
    }
    return HierarchicalModel(
        metadata, region_net, fracture_nets, device=device, max_batch=max_batch
    )
