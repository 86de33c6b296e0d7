"""A bundle with a type head: the node names the type of each flagged view, nowhere else.

The test bundle's type head is rigged to call "23r-M" (an AO group of GRAZPEDWRI-DX).
Its operating points flag every wrist view and no hand view, so the wrist study's SR
and database rows carry the type and the hand study's carry none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from config import Settings
from db.migrate import upgrade
from db.repositories import RunRepository
from dicom_node.outputs.codes import fracture_type_code
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_study
from tests.bundles import build_test_bundle
from tests.flows.conftest import concept_codes, store_study
from tests.peers import assert_dciodvfy_clean

TYPES = ("23r-M", "23r-E")


@pytest.mark.slow
def test_flagged_views_get_the_type_head_s_call_in_the_sr_and_the_database(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    bundle = build_test_bundle(tmp_path / "bundle", fracture_types=TYPES)
    runtime = Runtime.create(make_settings(model_bundle_dir=bundle))
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:  # sample 0 is a wrist (flagged "likely"), sample 1 a hand (never flagged)
        wrist = store_study(runtime, sample_studies[0])
        hand = store_study(runtime, sample_studies[1])
        with flow_run_settings(False):
            triage_study(wrist)
            triage_study(hand)
    finally:
        install_runtime(None)
    code = fracture_type_code("23r-M").value
    with runtime.sessions() as session:
        for uid, flagged in ((wrist, True), (hand, False)):
            run = RunRepository(session).latest_for_study(uid)
            assert run is not None and run.image_results
            for image in run.image_results:
                assert image.fracture_type == ("23r-M" if flagged else None)
                assert (image.fracture_type_probability is not None) is flagged
            (sr,) = [runtime.output_dir / o.path for o in run.outputs if o.kind == "sr"]
            assert (code in concept_codes(dcmread(sr))) is flagged
            for output in run.outputs:
                if output.kind != "hl7":
                    assert_dciodvfy_clean(runtime.output_dir / output.path)
