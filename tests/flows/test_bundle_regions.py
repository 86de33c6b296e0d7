"""A bundle whose regions are not MURA's: the node assesses what the bundle covers.

The test bundle is given FracAtlas's regions (hand, hip, lower limb, shoulder) with
stage 1 rigged to "lower limb": a study whose header names a knee is assessed as lower
limb (the SR's finding site says so), one whose header names a wrist is not assessed,
and every object the node writes passes dciodvfy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from config import FractureLevel, Settings
from config.domain.findings import Gate
from db.migrate import upgrade
from db.repositories import RunRepository
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_study
from tests.bundles import ALWAYS_LIKELY, NEVER, build_test_bundle
from tests.flows.conftest import concept_codes, store_study
from tests.peers import assert_dciodvfy_clean

FRACATLAS_REGIONS = ("hand", "hip", "lower limb", "shoulder")
LOWER_LIMB_CODE = "61685007"  # SNOMED CT "Lower limb"


def _as_body_part(study: Path, body_part: str, target: Path) -> Path:
    """A copy of ``study`` whose header names only ``body_part``."""
    shutil.copytree(study, target)
    for path in target.glob("*.dcm"):
        dataset = dcmread(path)
        dataset.BodyPartExamined = body_part
        dataset.StudyDescription = f"XR {body_part}"
        dataset.SeriesDescription = body_part
        del dataset.AnatomicRegionSequence
        dataset.save_as(path, enforce_file_format=True)
    return target


@pytest.mark.slow
def test_a_fracatlas_bundle_assesses_a_knee_and_not_a_wrist(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    points = {region: NEVER for region in FRACATLAS_REGIONS} | {"lower limb": ALWAYS_LIKELY}
    bundle = build_test_bundle(
        tmp_path / "bundle", points=points, stage1_region="lower limb", regions=FRACATLAS_REGIONS
    )
    knee = _as_body_part(sample_studies[0], "KNEE", tmp_path / "knee")
    wrist = _as_body_part(sample_studies[1], "WRIST", tmp_path / "wrist")
    runtime = Runtime.create(make_settings(model_bundle_dir=bundle))
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:
        knee_uid, wrist_uid = store_study(runtime, knee), store_study(runtime, wrist)
        with flow_run_settings(False):
            triage_study(knee_uid)
            triage_study(wrist_uid)
    finally:
        install_runtime(None)
    with runtime.sessions() as session:
        runs = RunRepository(session)
        knee_run, wrist_run = runs.latest_for_study(knee_uid), runs.latest_for_study(wrist_uid)
        assert knee_run is not None and knee_run.study_result is not None
        assert knee_run.study_result.level == FractureLevel.LIKELY
        assert {image.region for image in knee_run.image_results} == {"lower limb"}
        assert wrist_run is not None and wrist_run.study_result is not None
        assert wrist_run.study_result.level is None
        assert wrist_run.study_result.not_assessed_gate == Gate.HEADER
        runs_outputs = [*knee_run.outputs, *wrist_run.outputs]
        outputs = [runtime.output_dir / output.path for output in runs_outputs]
        knee_sr = [runtime.output_dir / o.path for o in knee_run.outputs if o.kind == "sr"]
    assert len(knee_sr) == 1 and LOWER_LIMB_CODE in concept_codes(dcmread(knee_sr[0]))
    for path in outputs:
        assert_dciodvfy_clean(path)
