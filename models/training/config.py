"""How a bundle is trained: :class:`TrainConfig` and its named presets (:data:`PRESETS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.domain.intended_use import check_age_range
from config.domain.vocabulary import LabelMeaning
from models.runtime.metadata import TestTimeAugmentation
from models.runtime.networks import ArchitectureName

#: Intended use of a bundle trained on phantoms (the ``"phantom"`` preset, the demo bundle).
INTENDED_USE = (
    "Demonstration and testing only. Trained on synthetic phantoms; NOT for clinical use."
)


class TrainConfig(BaseModel):
    """How :func:`train` trains a bundle from labelled records.

    The defaults follow MURA's baseline (DenseNet121 at 320x320, Adam-family optimiser at
    1e-4 with the learning rate divided by 10 on a validation-loss plateau, flips and
    rotations up to 30 degrees) and suit a GPU; :data:`PRESETS` names them ``"mura"`` and
    a short CPU run on phantoms ``"phantom"`` (see :func:`preset_config`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: ArchitectureName = Field(
        default="densenet121", description="One of models.runtime.networks.ARCHITECTURES."
    )
    image_size: int = Field(default=320, ge=32)
    batch_size: int = Field(default=16, ge=1)
    region_epochs: int = Field(default=8, ge=0)
    fracture_epochs: int = Field(default=12, ge=0, description="Shared fracture network.")
    finetune_epochs: int = Field(default=4, ge=0, description="Per-region fine-tuning.")
    shared_backbone: bool = Field(
        default=False,
        description="One network for both stages (the region and each region's fracture "
        "logit from one forward pass), trained on both targets at once for as many epochs "
        "as the two-network form's stages together (shared_epochs); False: a region network "
        "and a fine-tuned fracture network per region.",
    )
    detector_epochs: int = Field(
        default=0,
        ge=0,
        description="Epochs of the fracture detector (MONAI's RetinaNet), trained where the "
        "training images have fracture boxes; 0: no detector (Grad-CAM's boxes).",
    )
    detector_learning_rate: float = Field(default=1e-3, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    finetune_learning_rate: float = Field(default=3e-5, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    lr_schedule: Literal["plateau", "onecycle"] = Field(
        default="plateau",
        description=(
            "'plateau': learning rate times plateau_factor when the validation loss stalls; "
            "'onecycle': warm up to the learning rate and anneal within the stage (short runs)."
        ),
    )
    plateau_factor: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=1, ge=0)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    init_weights: Path | None = Field(
        default=None,
        description="A local checkpoint to start every network from (ImageNet or RadImageNet "
        "weights a site downloads itself); models.training.initial_weights.",
    )
    rotation_degrees: float = Field(default=30.0, ge=0, le=180)
    augment_probability: float = Field(default=0.5, ge=0, le=1)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    sensitivity_target: float = Field(default=0.95, gt=0, le=1)
    specificity_target: float = Field(default=0.95, gt=0, le=1)
    region_min_probability: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="The least confidence floor of stage 1; the bundle's floor is chosen on "
        "calibrated validation probabilities (in_distribution_acceptance), never below this.",
    )
    in_distribution_acceptance: float = Field(
        default=0.99,
        gt=0.5,
        le=1,
        description="Share of in-distribution validation images each pixel gate lets through "
        "(the out-of-distribution limit and the confidence floor are chosen for it).",
    )
    study_aggregation: Literal["mean", "max"] = "mean"
    test_time_augmentation: TestTimeAugmentation = Field(
        default="none",
        description="'flip': stage 2 averages each view with its mirror image, in the "
        "operating points' fitting as in the node.",
    )
    unsupported_phantoms: int = Field(
        default=300,
        ge=0,
        description="Synthetic 'unsupported' images added when the data has none (MURA).",
    )
    cache_rate: float = Field(default=1.0, ge=0, le=1, description="monai CacheDataset rate.")
    num_workers: int = Field(default=0, ge=0)
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda'.")
    amp: bool = Field(default=True, description="Mixed precision (CUDA only).")
    seed: int = 0
    resume: bool = Field(default=False, description="Continue from out_dir/training/.")
    name: str = "fracture-triage"
    version: str = "0.1.0"
    intended_use: str = (
        "Research and evaluation of fracture triage on musculoskeletal radiographs. Not a "
        "medical device; every output must be reviewed by a radiologist."
    )
    training_data: str = ""
    trained_on_synthetic_data: bool = False
    label_meaning: LabelMeaning = Field(
        default=LabelMeaning.FRACTURE,
        description="What a positive label of the data means (MURA's: abnormality).",
    )
    min_age_years: float | None = Field(
        default=18.0,
        ge=0,
        description="Youngest patients the bundle assesses (intended use); None: any age. "
        "Adults by default: children's growth plates are not in the training data.",
    )
    max_age_years: float | None = Field(
        default=None,
        ge=0,
        description="Oldest patients the bundle assesses (intended use); None: no limit. "
        "A paediatric data set (GRAZPEDWRI-DX: 0.2 to 19 years) sets it.",
    )

    @model_validator(mode="after")
    def _age_range(self) -> TrainConfig:
        check_age_range(self.min_age_years, self.max_age_years)  # the intended use's rule
        return self

    @property
    def shared_epochs(self) -> int:
        """Epochs of a shared-backbone network: the two-network form's stages' together
        (region, fracture, fine-tuning), each an epoch over the training images."""
        return self.region_epochs + self.fracture_epochs + self.finetune_epochs

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto":
            try:
                torch.device(value)
            except RuntimeError as error:
                raise ValueError(f"device {value!r} is not a torch device or 'auto'") from error
        return value


#: Named starting points for :class:`TrainConfig` (see :func:`preset_config`).
#: ``"mura"`` is the class defaults: MURA's baseline, meant for a GPU. ``"phantom"`` is a
#: short run (two to four minutes on two CPU cores; the model card records the time of
#: each run, benchmarks hold speed goals) that meets the phantom bars
#: (region accuracy and fracture AUROC >= 0.9, Grad-CAM box hit rate >= 0.8): a small
#: DenseNet at 128 px (an 8x8 Grad-CAM grid), a one-cycle schedule at a high learning rate,
#: and no extra augmentation, since every phantom is already randomly rotated, scaled,
#: flipped and shifted when it is rendered.
PRESETS: dict[str, dict[str, Any]] = {
    "mura": {},
    "phantom": {
        "architecture": "densenet-small",
        "image_size": 128,
        "batch_size": 32,
        "region_epochs": 4,
        "fracture_epochs": 10,
        "finetune_epochs": 2,
        "learning_rate": 3e-3,
        "finetune_learning_rate": 5e-4,
        "lr_schedule": "onecycle",
        "augment_probability": 0.0,
        "val_fraction": 0.15,
        "test_fraction": 0.1,
        "trained_on_synthetic_data": True,
        "intended_use": INTENDED_USE,
        "training_data": (
            "Synthetic radiograph phantoms (models.training.phantoms, no patient data)"
        ),
    },
}


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a named preset of :data:`PRESETS`, with ``overrides``.

    Raises
    ------
    ValueError
        If ``preset`` is not a key of :data:`PRESETS` (or an override is invalid).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {tuple(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})
