"""A bundle with a detector: a flagged view's box is the detector's, and says so.

The test bundle's detector is untrained, with a report score of 0, so it boxes every
flagged view whatever it learned: the test is of the plumbing (detector box into the
database, the SR's ROI, the GSPS and the annotated capture), not of the detector's skill,
which tests/models/test_detection.py measures on phantoms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from config import Settings
from config.settings import OutputSettings
from db.repositories import RunRepository
from models.runtime.bundle import load_metadata, update_metadata
from models.runtime.detection import DetectorSpec
from models.runtime.inference import HierarchicalModel
from models.training.layouts import load_records
from models.training.public_sets import write_phantom_grazpedwri
from models.training.train import train
from tests.bundles import build_test_bundle
from tests.flows.conftest import triage_in_process
from tests.models.conftest import tiny_train_config
from tests.peers import assert_dciodvfy_clean

BOXES_EVERY_FLAGGED_VIEW = DetectorSpec(score_threshold=0.0, report_score=0.0)


@pytest.mark.slow
def test_a_flagged_view_gets_the_detector_s_box_in_every_output(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    bundle = build_test_bundle(tmp_path / "bundle", detector=BOXES_EVERY_FLAGGED_VIEW)
    # Sample 0 is a wrist study, flagged "likely" by the test bundle's points.
    runtime, (wrist,) = triage_in_process(make_settings(model_bundle_dir=bundle), sample_studies[0])
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


def _scoords(item: Dataset) -> list[Dataset]:
    found = [child for child in item.get("ContentSequence", []) if child.ValueType == "SCOORD"]
    for child in item.get("ContentSequence", []):
        found += _scoords(child)
    return found


@pytest.mark.slow
def test_a_detector_trained_on_phantoms_draws_the_sr_roi(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    """Trained, not rigged: an epoch on the GRAZPEDWRI-DX fixture's YOLO boxes gives a
    wrist bundle with a detector; with its report score and stage 1's floor set to 0 and
    the site's thresholds at 0, every view of the wrist study is flagged and its SR region
    is the detector's box (not the whole view), whatever the briefly trained networks
    think."""
    data = write_phantom_grazpedwri(tmp_path / "data", patients=8, size=64, seed=2)
    config = tiny_train_config(
        image_size=64, fracture_epochs=1, detector_epochs=1, in_distribution_acceptance=1.0
    )
    bundle = train(config, load_records(data, "grazpedwri"), tmp_path / "b", progress=False)
    assert load_metadata(bundle).detector is not None
    # Rigged for the plumbing: stage 1's floor at 0 lets its call stand, and the detector
    # reports its best box whatever its score.
    update_metadata(bundle, detector=BOXES_EVERY_FLAGGED_VIEW, region_min_probability=0.0)
    settings = make_settings(
        model_bundle_dir=bundle, fracture_suspected_threshold=0.0, fracture_likely_threshold=0.0
    )
    runtime, (wrist,) = triage_in_process(settings, sample_studies[0])
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(wrist)
        assert run is not None and run.image_results
        reasons = [(i.not_assessed_gate, i.not_assessed_reason) for i in run.image_results]
        assert all(image.level is not None for image in run.image_results), reasons
        (sr,) = [runtime.output_dir / o.path for o in run.outputs if o.kind == "sr"]
        captures = [runtime.output_dir / o.path for o in run.outputs if o.kind == "sc"]
    for capture in captures:  # the box drawn is the detector's
        assert "finding box (detector)" in dcmread(capture).DerivationDescription
    views = [dcmread(path) for path in sorted(sample_studies[0].rglob("*.dcm"))]
    outlines = {(0.0, 0.0, float(v.Columns), float(v.Rows)) for v in views}
    regions = [s for s in _scoords(dcmread(sr)) if s.GraphicType == "POLYLINE"]
    assert len(regions) >= len(views)  # each view's group (and its inferred probability)
    for region in regions:  # a box inside the view, not the view's own outline
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        extent = (*points.min(axis=0), *points.max(axis=0))
        assert tuple(float(v) for v in extent) not in outlines
    assert_dciodvfy_clean(sr)


@pytest.mark.slow
def test_the_detector_does_not_run_where_no_output_draws_a_box(
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SR only, without ROIs: nothing draws a box, so neither the detector nor Grad-CAM runs
    (a detector that raised would fail the study)."""

    def refuse(*_: object) -> None:
        raise AssertionError("the detector ran although no output draws a box")

    monkeypatch.setattr(HierarchicalModel, "detect", refuse)
    bundle = build_test_bundle(tmp_path / "bundle", detector=BOXES_EVERY_FLAGGED_VIEW)
    switches = ("summary", "annotated", "gsps", "parametric_map", "sr_rois")
    only_sr = OutputSettings(**dict.fromkeys(switches, False))
    settings = make_settings(model_bundle_dir=bundle, outputs=only_sr)
    runtime, (wrist,) = triage_in_process(settings, sample_studies[0])
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(wrist)
        assert run is not None and run.image_results
        assert all(image.level is not None for image in run.image_results)
        assert [o.kind for o in run.outputs if o.kind != "hl7"] == ["sr"]
