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
from db.repositories import RunRepository
from dicom_node.outputs.codes import fracture_type_code
from models.training.layouts import load_records
from models.training.public_sets import FRACTURE_TYPE_CLASSES, write_phantom_fracture_types
from models.training.train import train
from tests.bundles import build_test_bundle
from tests.flows.conftest import concept_codes, triage_in_process
from tests.models.conftest import tiny_train_config
from tests.peers import assert_dciodvfy_clean

TYPES = ("23r-M", "23r-E")


@pytest.mark.slow
def test_flagged_views_get_the_type_head_s_call_in_the_sr_and_the_database(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    bundle = build_test_bundle(tmp_path / "bundle", fracture_types=TYPES)
    # Sample 0 is a wrist (flagged "likely"), sample 1 a hand (never flagged).
    runtime, (wrist, hand) = triage_in_process(
        make_settings(model_bundle_dir=bundle), sample_studies[0], sample_studies[1]
    )
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


@pytest.mark.slow
def test_a_type_head_trained_on_phantoms_reaches_the_sr(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    """Trained, not rigged: a few steps on the ten-class fixture give a bundle (region
    'extremity') whose type head names one of the fixture's types in the wrist study's SR.
    The site's thresholds at 0 flag every view, so the type is said whatever the briefly
    trained stage 2 thinks."""
    data = write_phantom_fracture_types(tmp_path / "types", per_class=2, size=48, seed=3)
    config = tiny_train_config(
        region_epochs=2,
        max_steps_per_epoch=3,
        fracture_epochs=1,
        image_size=64,
        in_distribution_acceptance=1.0,  # the gate lets every in-distribution view through
    )
    bundle = train(config, load_records(data, "fracture-types"), tmp_path / "b", progress=False)
    settings = make_settings(
        model_bundle_dir=bundle, fracture_suspected_threshold=0.0, fracture_likely_threshold=0.0
    )
    runtime, (wrist,) = triage_in_process(settings, sample_studies[0])
    codes = {fracture_type_code(name).value: name for name in FRACTURE_TYPE_CLASSES}
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(wrist)
        assert run is not None and run.image_results
        assert all(image.fracture_type in FRACTURE_TYPE_CLASSES for image in run.image_results)
        (sr,) = [runtime.output_dir / o.path for o in run.outputs if o.kind == "sr"]
    assert set(concept_codes(dcmread(sr))) & set(codes)
