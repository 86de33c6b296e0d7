"""Shared fixtures for the models tests: one demo bundle trained per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.runtime.bundle import load_bundle
from models.runtime.inference import HierarchicalModel
from models.training.config import TrainConfig
from models.training.phantoms import PhantomSplit, make_split

#: Seed of the held-out phantoms; differs from the training seed on purpose.
HELD_OUT_SEED = 12345


@pytest.fixture(scope="session")
def demo_bundle_dir(demo_bundle: Path) -> Path:
    """The demo bundle trained once for the whole test session (tests/conftest.py)."""
    return demo_bundle


@pytest.fixture(scope="session")
def demo_model(demo_bundle_dir: Path) -> HierarchicalModel:
    """The trained demo bundle, loaded."""
    return load_bundle(demo_bundle_dir)


@pytest.fixture(scope="session")
def held_out(demo_model: HierarchicalModel) -> PhantomSplit:
    """Fresh phantoms, rendered at twice the model size so resizing is exercised too."""
    size = demo_model.image_size
    return make_split(np.random.default_rng(HELD_OUT_SEED), 30, size, render_size=2 * size)


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """A training run of a few steps at 32 px: for what training writes, not what it learns."""
    settings: dict[str, Any] = {
        "architecture": "densenet-small",
        "image_size": 32,
        "batch_size": 16,
        "region_epochs": 1,
        "fracture_epochs": 0,
        "finetune_epochs": 0,
        "max_steps_per_epoch": 1,
        "unsupported_phantoms": 16,
        "trained_on_synthetic_data": True,
        "val_fraction": 0.25,
    }
    return TrainConfig(**{**settings, **overrides})
