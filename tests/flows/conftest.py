"""Shared fixtures of the flow tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

#: The version the upgraded copy of the demo bundle claims.
UPGRADED_VERSION = "0.2.0"


def bundle_with_version(bundle: Path, version: str, target: Path) -> Path:
    """A copy of ``bundle`` that says it is model version ``version``."""
    shutil.copytree(bundle, target)
    metadata_path = target / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["version"] = version
    metadata_path.write_text(json.dumps(metadata, indent=2))
    return target


@pytest.fixture
def upgraded_bundle(demo_bundle: Path, tmp_path: Path) -> Path:
    """The demo bundle as a newer model version (a site upgrading its model)."""
    return bundle_with_version(demo_bundle, UPGRADED_VERSION, tmp_path / "bundle-upgraded")
