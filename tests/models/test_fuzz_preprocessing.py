"""Fuzzing the preprocessing path: mutated files through the triage flow's loader.

Every file either becomes a finite model input of the right shape or raises an
exception, which the flow's preprocess task reports as an unreadable view (the study
goes on with its other views). No crash, no hang, no non-finite input. The store
fuzz (``tests/dicom_node/test_fuzz_store.py``) also runs what the SCP accepted
through this loader; here every mutated file does, accepted or not.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzzing import Case, cases, load_seeds, preprocess_case, write_case

SEEDS = load_seeds()


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-preprocessing")


def test_the_seeds_preprocess(directory: Path) -> None:
    """The baseline: the grayscale single-frame seeds become model inputs."""
    results = {
        seed.name: preprocess_case(write_case(Case(seed, ()), directory))[0] for seed in SEEDS
    }
    assert results["dx-explicit"] == results["dx-implicit"] == "ok"
    assert results["mr-rle"] == results["mr-j2k"] == "ok"
    assert results["rtplan-nested"] == "ValueError"  # no pixel data: reported, not crashed


@settings(
    max_examples=200,
    deadline=dt.timedelta(seconds=20),  # longer is a hang (2 shared cores)
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(SEEDS))
def test_mutated_files_become_a_model_input_or_a_reported_error(
    directory: Path, case: Case
) -> None:
    path = write_case(case, directory)
    try:
        result, _ = preprocess_case(path)
    finally:
        path.unlink()
    assert result
