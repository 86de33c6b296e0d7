"""The training code fingerprint changes with the code, not with its formatting."""

from __future__ import annotations

import shutil
from pathlib import Path

from config import REGIONS
from models.runtime.bundle import BundleMetadata, OperatingPoints, save_bundle
from models.runtime.networks import NetworkSpec, build_network
from models.training import fingerprint
from models.training.demo import demo_bundle_is_current, training_code_fingerprint
from models.training.fingerprint import code_fingerprint

MODULE = Path(fingerprint.ROOT) / "models" / "training" / "operating_points.py"


def _copy(tmp_path: Path, text: str | None = None) -> str:
    target = tmp_path / "models" / "training" / "operating_points.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        shutil.copyfile(MODULE, target)
    else:
        target.write_text(text)
    return code_fingerprint([target], tmp_path)


def test_formatting_comments_and_docstrings_leave_it_unchanged(tmp_path: Path) -> None:
    original = MODULE.read_text()
    reference = _copy(tmp_path)
    assert len(reference) == 16 and int(reference, 16) >= 0
    reformatted = "# A comment at the top.\n" + original
    reformatted = reformatted.replace(
        "    labels = np.asarray(labels).astype(bool)\n",
        "\n\n    labels = (\n        np.asarray(labels)  # a comment\n"
        "        .astype(bool)\n    )\n",
        1,
    )
    reformatted = reformatted.replace('"""Study ids, study', '"""Reworded: the study ids, study', 1)
    reformatted = reformatted.replace("getLogger(__name__)", "getLogger( __name__, )")
    assert reformatted != original
    assert _copy(tmp_path, reformatted) == reference


def test_a_code_change_or_a_move_changes_it(tmp_path: Path) -> None:
    original = MODULE.read_text()
    reference = _copy(tmp_path)
    changed = original.replace("sensitivity: float = 0.95", "sensitivity: float = 0.9", 1)
    assert changed != original
    assert _copy(tmp_path, changed) != reference
    moved = tmp_path / "models" / "training" / "thresholds.py"
    shutil.copyfile(MODULE, moved)
    assert code_fingerprint([moved], tmp_path) != reference


def test_the_training_code_fingerprint_covers_models_and_the_domain() -> None:
    root = fingerprint.ROOT
    files = [f for folder in fingerprint.TRAINING_CODE for f in (root / folder).rglob("*.py")]
    names = {f.relative_to(root).as_posix() for f in files}
    assert {"models/runtime/preprocessing.py", "models/training/train.py"} <= names
    assert "config/domain/decision.py" in names
    assert training_code_fingerprint() == code_fingerprint(files, root)
    assert training_code_fingerprint() == training_code_fingerprint()


def _untrained_bundle(path: Path, **fields: object) -> Path:
    spec = NetworkSpec(architecture="densenet-small", out_channels=1)
    metadata = BundleMetadata(
        name="untrained",
        version="0",
        description="untrained networks, for bookkeeping tests",
        intended_use="tests",
        training_data="none",
        trained_on_synthetic_data=True,
        image_size=32,
        region_network=NetworkSpec(architecture="densenet-small", out_channels=8),
        fracture_network=spec,
        region_min_probability=0.5,
        thresholds={r: OperatingPoints(suspected=0.3, likely=0.7) for r in REGIONS},
        **fields,  # type: ignore[arg-type]
    )
    networks = {region: build_network(spec) for region in REGIONS}
    return save_bundle(path, metadata, build_network(metadata.region_network), networks)


def test_a_demo_bundle_is_current_only_if_complete_and_made_by_this_code(tmp_path: Path) -> None:
    current = {"evaluation": {"images": 1}}
    today = training_code_fingerprint()
    bundle = _untrained_bundle(tmp_path / "a", metrics=current, training_code_fingerprint=today)
    assert demo_bundle_is_current(bundle)
    card = (bundle / "docs" / "README.md").read_text()
    assert f"Training code fingerprint: {today}." in card
    older = _untrained_bundle(tmp_path / "b", metrics=current)  # recorded no fingerprint
    assert not demo_bundle_is_current(older)
    other = _untrained_bundle(tmp_path / "c", metrics=current, training_code_fingerprint="0" * 16)
    assert not demo_bundle_is_current(other)
    unevaluated = _untrained_bundle(tmp_path / "d", training_code_fingerprint=today)
    assert not demo_bundle_is_current(unevaluated)
    (bundle / "models" / "model.pt").unlink()
    assert not demo_bundle_is_current(bundle)
    assert not demo_bundle_is_current(tmp_path / "missing")
