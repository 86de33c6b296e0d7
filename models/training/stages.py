"""One training stage: a network fitted to one target, checkpointed every epoch, resumable.

:func:`models.training.train.train` runs its stages (the region network, the fracture
network of all regions, one fine-tuning per region, the type head; or, for a shared-backbone
bundle, one network on both stages' targets) through one :class:`StageRunner`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotated
from torch import nn
from torch.utils.data import Dataset

from models.runtime.networks import fracture_logits, shared_outputs
from models.runtime.ood import penultimate_features
from models.training.config import TrainConfig
from models.training.datasets import LoadRecordImaged

logger = logging.getLogger(__name__)


def training_transforms(config: TrainConfig, augment: bool) -> Compose:
    """Load + preprocess (cached by CacheDataset), then MURA-style augmentation if ``augment``.

    Loading is :class:`models.training.datasets.LoadRecordImaged`, i.e. the node's own display
    rendering and :func:`models.runtime.preprocessing.preprocess`; augmentation is random
    horizontal flips and rotations up to ``config.rotation_degrees`` (monai.transforms).
    """
    steps: list[Any] = [LoadRecordImaged("image", config.image_size)]
    if augment and config.augment_probability > 0:
        steps += [
            RandFlipd("image", prob=config.augment_probability, spatial_axis=1),
            RandRotated(
                "image",
                range_x=float(np.deg2rad(config.rotation_degrees)),
                prob=config.augment_probability,
                keep_size=True,
                padding_mode="zeros",
            ),
        ]
    steps.append(EnsureTyped(["image", "region", "fracture", "type"], track_meta=False))
    return Compose(steps)


def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """Cross-entropy weights inverse to the class frequencies (an absent class counts as one)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = counts.sum() / (classes * np.maximum(counts, 1.0))
    return torch.as_tensor(weights, dtype=torch.float32)


def epoch_steps(config: TrainConfig, images: int) -> int:
    """Optimiser steps of one epoch over ``images`` images (at most ``max_steps_per_epoch``)."""
    steps = int(np.ceil(images / config.batch_size))
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    return steps


#: What a stage learns (see :attr:`Stage.target`).
StageTarget = Literal["region", "fracture", "type", "both"]


def _stage_seed(seed: int, stage: str) -> int:
    return seed * 1000 + sum(ord(c) * (i + 1) for i, c in enumerate(stage)) % 997


@dataclass
class Stage:
    """One network trained on one target: the unit of checkpointing and resuming.

    Attributes
    ----------
    name
        Checkpoint name (``region``, ``fracture-shared``, ``fracture-<region>``); it also
        seeds the batch order.
    network
        Trained in place; left in eval mode with the best-validation weights.
    train_set, val_set
        Data dictionaries with ``image`` and the ``target`` key.
    target
        ``"region"`` or ``"type"`` (class index, cross-entropy), ``"fracture"`` (0/1, one
        logit) or ``"both"`` (region class index and fracture label, for
        :class:`SharedStagesLoss`).
    loss
        The loss on the network's logits.
    epochs, learning_rate
        Length and peak learning rate of the stage.
    """

    name: str
    network: nn.Module
    train_set: Dataset[Any]
    val_set: Dataset[Any]
    target: StageTarget
    loss: nn.Module
    epochs: int
    learning_rate: float

    def targets(self, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
        """:func:`batch_targets` in the loss's form: (N, 1) floats, (N,) class indices or
        (N, 2) region and label."""
        target = raw.to(device)
        return target.float()[:, None] if self.target == "fracture" else target.long()


def batch_targets(batch: dict[str, torch.Tensor], target: StageTarget) -> torch.Tensor:
    """A batch's ``target``: its key's values, or for ``"both"`` (N, 2) region and label."""
    if target == "both":
        return torch.stack([batch["region"], batch["fracture"]], dim=1)
    return batch[target]


class SharedStagesLoss(nn.Module):
    """Both stages of a shared-backbone network at once: stage 1's (class-weighted)
    cross-entropy over the first ``classes`` logits, plus the (positive-weighted) fracture
    BCE of each supported image's own region's fracture logit (its own plus the common
    one, :class:`~models.runtime.networks.SharedStages`); 'unsupported' is the last class.

    Parameters
    ----------
    region_weights
        Cross-entropy weights per stage-1 class (``classes`` of them).
    pos_weight
        BCE weight of the positives, shape (1,).
    """

    def __init__(self, region_weights: torch.Tensor, pos_weight: torch.Tensor) -> None:
        super().__init__()
        self.classes = int(region_weights.shape[0])
        self.region = nn.CrossEntropyLoss(weight=region_weights)
        self.fracture = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != shared_outputs(self.classes - 1):
            raise ValueError(f"{logits.shape[1]} logits for {self.classes} stage-1 classes")
        regions, labels = targets[:, 0], targets[:, 1]
        loss = self.region(logits[:, : self.classes], regions)
        supported = regions < self.classes - 1
        if supported.any():
            by_region = fracture_logits(logits[supported], self.classes, self.classes - 1)
            chosen = by_region.gather(1, regions[supported][:, None])
            loss = loss + self.fracture(chosen, labels[supported].float()[:, None])
        return loss


@dataclass
class _Optimisation:
    """Optimiser, learning-rate schedule and AMP scaler of one stage (checkpointed together)."""

    optimiser: torch.optim.Optimizer
    scheduler: Any  # OneCycleLR or ReduceLROnPlateau: no common public base class
    scaler: torch.amp.GradScaler
    one_cycle: bool

    def state(self) -> dict[str, Any]:
        return {
            "optimiser": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class _Best:
    """The lowest validation loss so far and the weights that reached it."""

    loss: float = float("inf")
    state: dict[str, torch.Tensor] | None = None

    def update(self, loss: float, network: nn.Module) -> None:
        if loss <= self.loss or self.state is None:
            self.loss = loss
            self.state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


class StageRunner:
    """Trains one network per :class:`Stage` with checkpoints (resumable per epoch).

    Parameters
    ----------
    config
        Batch size, schedule, seed, resume flag and the other training options.
    device
        Where the networks train.
    checkpoint_dir
        One ``<stage>.pt`` per stage, rewritten after every epoch.
    advance
        Called with the number of optimiser steps taken (progress reporting).
    """

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        checkpoint_dir: Path,
        advance: Callable[[int], None],
    ) -> None:
        self.config = config
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.advance = advance
        self.amp = config.amp and device.type == "cuda"

    def _loader(self, dataset: Dataset[Any], shuffle: bool, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            num_workers=self.config.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def predict(
        self, network: nn.Module, dataset: Dataset[Any], key: StageTarget
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets ``key`` of a dataset (eval mode, no augmentation)."""
        logits, targets, _features = self.predict_with_features(network, dataset, key)
        return logits, targets

    def predict_with_features(
        self, network: nn.Module, dataset: Dataset[Any], key: StageTarget
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, targets ``key`` and the classifier layer's input features of a dataset."""
        network.eval()
        logits, targets = [], []
        with torch.no_grad(), penultimate_features(network) as features:
            for batch in self._loader(dataset, False, 0):
                with torch.autocast(self.device.type, enabled=self.amp):
                    out = network(batch["image"].to(self.device))
                logits.append(out.float().cpu())
                targets.append(batch_targets(batch, key))
        if not logits:
            return torch.empty(0), torch.empty(0), torch.empty(0)
        return torch.cat(logits), torch.cat(targets), torch.cat(features).cpu()

    def fit(self, stage: Stage) -> dict[str, Any]:
        """Train ``stage.network`` in place; returns a summary (epochs, best validation loss)."""
        stage.network.to(self.device)
        stage.loss.to(self.device)
        optimisation = self._optimisation(stage)
        checkpoint = self.checkpoint_dir / f"{stage.name}.pt"
        start, best = self._resume(stage, optimisation, checkpoint)
        seed = _stage_seed(self.config.seed, stage.name)
        torch.manual_seed(seed + start)
        for epoch in range(start, stage.epochs):
            self._train_epoch(
                stage, optimisation, self._loader(stage.train_set, True, seed + epoch)
            )
            val_loss = self._val_loss(stage)
            if not optimisation.one_cycle:
                optimisation.scheduler.step(val_loss)
            best.update(val_loss, stage.network)
            logger.info("stage %s epoch %d: validation loss %.4f", stage.name, epoch + 1, val_loss)
            state = {"epoch": epoch + 1, "network": stage.network.state_dict()}
            state |= optimisation.state() | {"best_loss": best.loss, "best_state": best.state}
            torch.save(state, checkpoint)
        if best.state is not None:
            stage.network.load_state_dict(best.state)
        stage.network.eval()
        return {"epochs": stage.epochs, "best_val_loss": round(float(best.loss), 4)}

    def _optimisation(self, stage: Stage) -> _Optimisation:
        config = self.config
        optimiser = torch.optim.AdamW(
            stage.network.parameters(), lr=stage.learning_rate, weight_decay=config.weight_decay
        )
        one_cycle = config.lr_schedule == "onecycle"
        scheduler: Any
        if one_cycle:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimiser,
                max_lr=stage.learning_rate,
                total_steps=max(1, stage.epochs * epoch_steps(self.config, len(stage.train_set))),
                pct_start=0.2,
            )
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimiser,
                mode="min",
                factor=config.plateau_factor,
                patience=config.plateau_patience,
            )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        return _Optimisation(optimiser, scheduler, scaler, one_cycle)

    def _resume(
        self, stage: Stage, optimisation: _Optimisation, checkpoint: Path
    ) -> tuple[int, _Best]:
        """The epoch to start from and the best weights so far (from a checkpoint on resume)."""
        if not (self.config.resume and checkpoint.is_file()):
            return 0, _Best()
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        stage.network.load_state_dict(state["network"])
        optimisation.load(state)
        start = state["epoch"]
        logger.info("stage %s resumed after epoch %d", stage.name, start)
        self.advance(start * epoch_steps(self.config, len(stage.train_set)))
        return start, _Best(state["best_loss"], state["best_state"])

    def _train_epoch(self, stage: Stage, optimisation: _Optimisation, loader: DataLoader) -> None:
        stage.network.train()
        for step, batch in enumerate(loader):
            if (
                self.config.max_steps_per_epoch is not None
                and step >= self.config.max_steps_per_epoch
            ):
                break
            images = batch["image"].to(self.device, non_blocking=True)
            target = stage.targets(batch_targets(batch, stage.target), self.device)
            optimisation.optimiser.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = stage.loss(stage.network(images).float(), target)
            optimisation.scaler.scale(loss).backward()
            optimisation.scaler.step(optimisation.optimiser)
            optimisation.scaler.update()
            if optimisation.one_cycle:
                optimisation.scheduler.step()
            self.advance(1)

    def _val_loss(self, stage: Stage) -> float:
        if len(stage.val_set) == 0:
            return 0.0
        logits, targets = self.predict(stage.network, stage.val_set, stage.target)
        with torch.no_grad():
            target = stage.targets(targets, self.device)
            return float(stage.loss(logits.to(self.device), target))
