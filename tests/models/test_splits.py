"""A bundle's record of its patients per split: recognises them, never names them."""

from __future__ import annotations

import json
from pathlib import Path

from models.training.splits import SPLITS_FILE, PatientSplits


def test_patients_are_recognised_from_salted_digests_only(tmp_path: Path) -> None:
    PatientSplits.of({"train": {"PID-0042"}, "test": {"PID-0043"}}).write(tmp_path)
    text = (tmp_path / SPLITS_FILE).read_text()
    assert "PID-0042" not in text and "PID-0043" not in text
    splits = PatientSplits.read(tmp_path)
    assert splits is not None
    assert splits.contains("train", "PID-0042") and not splits.contains("train", "PID-0043")
    assert splits.contains("test", "PID-0043") and splits.count("val") == 0
    # Two bundles with the same patient: different salts, different digests.
    again = PatientSplits.of({"train": {"PID-0042"}})
    assert again.members["train"] != splits.members["train"]


def test_a_file_of_plain_ids_from_before_is_still_read(tmp_path: Path) -> None:
    (tmp_path / SPLITS_FILE).parent.mkdir(parents=True)
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"train": ["a"], "val": ["b"], "test": []}))
    splits = PatientSplits.read(tmp_path)
    assert splits is not None and splits.contains("val", "b") and not splits.contains("val", "a")
    assert PatientSplits.read(tmp_path / "elsewhere") is None
