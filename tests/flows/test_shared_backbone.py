"""A shared-backbone bundle: one network gives stage 1 and stage 2, so stage 2 runs no pass
of its own, and every output is as the two-network form's.

The test bundle is rigged as its two-network form is (stage 1 names the header's region,
the operating points decide the level), with the shared network's fracture logits random:
the test is of the plumbing; tests/models/test_shared_backbone.py measures what training
the shared form learns on phantoms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from config import Settings
from db.repositories import RunRepository
from db.statuses import RunStatus
from models.runtime.inference import HierarchicalModel
from tests.bundles import build_test_bundle
from tests.flows.conftest import triage_in_process
from tests.peers import assert_dciodvfy_clean


def _no_second_pass(
    _model: HierarchicalModel, _images: np.ndarray, _regions: list[str | None]
) -> list[float | None]:
    raise AssertionError("stage 2 ran a pass of its own beside the shared network's")


@pytest.mark.slow
def test_a_shared_backbone_bundle_triages_in_one_pass_with_valid_outputs(
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = build_test_bundle(tmp_path / "bundle", shared_backbone=True)
    monkeypatch.setattr(HierarchicalModel, "classify_fractures", _no_second_pass)
    # Sample 0 is a wrist study, flagged "likely" by the test bundle's points.
    runtime, (wrist,) = triage_in_process(make_settings(model_bundle_dir=bundle), sample_studies[0])
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(wrist)
        assert run is not None and run.status == RunStatus.SUCCEEDED
        assert run.image_results
        for image in run.image_results:
            assert image.region == "wrist"
            assert image.fracture_probability is not None
            assert 0.0 < image.fracture_probability < 1.0
        paths = [runtime.output_dir / o.path for o in run.outputs if o.kind != "hl7"]
        kinds = {o.kind for o in run.outputs}
    assert {"sr", "sc"} <= kinds  # the SR and the annotated captures of the flagged views
    for path in paths:
        assert_dciodvfy_clean(path)
