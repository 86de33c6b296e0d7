"""Shared fixtures for the models tests: one demo bundle trained per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.runtime.bundle import load_bundle
from models.runtime.inference import HierarchicalModel
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
