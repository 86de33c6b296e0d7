"""Test-time augmentation: stage 2's probability is the mean of a view and its mirror."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.runtime.bundle import load_bundle, load_metadata, update_metadata
from models.training.layouts import load_records, write_phantom_dataset
from models.training.train import train
from tests.bundles import build_test_bundle
from tests.models.conftest import tiny_train_config


def test_flip_averages_the_view_and_its_mirror(tmp_path: Path) -> None:
    plain = build_test_bundle(tmp_path / "plain")
    flipped = shutil.copytree(plain, tmp_path / "flip")
    update_metadata(flipped, test_time_augmentation="flip")
    without, with_tta = load_bundle(plain), load_bundle(flipped)
    images = torch.as_tensor(
        np.random.default_rng(1).normal(size=(3, 1, 64, 64)), dtype=torch.float32
    )
    mirrored = torch.flip(images, dims=[3])
    regions = ["wrist", "elbow", None]
    direct = without.classify_fractures(images, regions)
    mirror = without.classify_fractures(mirrored, regions)
    averaged = with_tta.classify_fractures(images, regions)
    for a, b, mean in zip(direct[:2], mirror[:2], averaged[:2], strict=True):
        assert a is not None and b is not None and mean == pytest.approx((a + b) / 2, abs=1e-6)
        assert a != pytest.approx(b)  # the untrained network is not mirror-symmetric
    assert averaged[2] is None
    # The Grad-CAM path reports the same (augmented) probability; the map is the view's.
    explained, _ = with_tta.classify_and_explain(images, regions)
    assert explained[:2] == pytest.approx(averaged[:2], abs=1e-5)


@pytest.mark.slow
def test_training_picks_the_points_with_the_augmentation_it_records(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "data", "csv", size=48, seed=2, patients=8)
    config = tiny_train_config(fracture_epochs=1, test_time_augmentation="flip")
    bundle = train(config, load_records(data, "csv"), tmp_path / "b", progress=False)
    metadata = load_metadata(bundle)
    assert metadata.test_time_augmentation == "flip"
    assert "Test-time augmentation of stage 2: flip" in (bundle / "docs" / "README.md").read_text()
