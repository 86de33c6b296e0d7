"""The runtime every process triages with loads only a bundle the node may serve."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from config import Settings
from flows.runtime import Runtime, UnservableBundleError
from models.runtime.bundle import update_metadata


def test_a_worker_refuses_a_bundle_whose_labels_meant_abnormality(
    make_settings: Callable[..., Settings], test_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "abnormality-bundle"
    shutil.copytree(test_bundle, bundle)
    update_metadata(bundle, label_meaning="abnormality")
    runtime = Runtime.create(make_settings(model_bundle_dir=bundle))
    try:
        with pytest.raises(UnservableBundleError, match="does not run this bundle"):
            runtime.model()
        with pytest.raises(UnservableBundleError):  # not cached: every try is refused
            runtime.model()
    finally:
        runtime.close()
