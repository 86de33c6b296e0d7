"""A bundle with a detector: a flagged view's box is the detector's, and says so.

The test bundle's detector is untrained, with a report score of 0, so it boxes every
flagged view whatever it learned: the test is of the plumbing (detector box into the
database, the SR's ROI, the GSPS and the annotated capture), not of the detector's skill,
which tests/models/test_detection.py measures on phantoms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from config import Settings
from db.migrate import upgrade
from db.repositories import RunRepository
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_study
from models.runtime.detection import DetectorSpec
from tests.bundles import build_test_bundle
from tests.flows.conftest import store_study
from tests.peers import assert_dciodvfy_clean

BOXES_EVERY_FLAGGED_VIEW = DetectorSpec(score_threshold=0.0, report_score=0.0)


@pytest.mark.slow
def test_a_flagged_view_gets_the_detector_s_box_in_every_output(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    bundle = build_test_bundle(tmp_path / "bundle", detector=BOXES_EVERY_FLAGGED_VIEW)
    runtime = Runtime.create(make_settings(model_bundle_dir=bundle))
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:  # sample 0 is a wrist study, flagged "likely" by the test bundle's points
        wrist = store_study(runtime, sample_studies[0])
        with flow_run_settings(False):
            triage_study(wrist)
    finally:
        install_runtime(None)
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(wrist)
        assert run is not None and run.image_results
        paths = [runtime.output_dir / o.path for o in run.outputs if o.kind != "hl7"]
        captures = [runtime.output_dir / o.path for o in run.outputs if o.kind == "sc"]
    assert captures  # the annotated views
    for capture in captures:
        assert "finding box (detector)" in dcmread(capture).DerivationDescription
    for path in paths:
        assert_dciodvfy_clean(path)
