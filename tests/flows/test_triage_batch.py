"""triage_batch: several ready studies in one flow run, urgent first, failures kept apart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from config import Settings
from db.audit import AuditEventType, AuditLog
from db.models import OutputObject, RunStatus, Study, StudyStatus, TriageRun
from flows.maintenance import reprocess
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_batch
from tests.flows.conftest import store_study

pytestmark = pytest.mark.slow


@pytest.fixture
def runtime(make_settings: Callable[..., Settings]) -> Iterator[Runtime]:
    from db.migrate import upgrade

    runtime = Runtime.create(make_settings())
    upgrade(runtime.engine)
    install_runtime(runtime)
    with flow_run_settings(False):
        yield runtime
    install_runtime(None)


def test_one_batch_triages_every_ready_study_urgent_first(
    runtime: Runtime, sample_studies: list[Path]
) -> None:
    routine = store_study(runtime, sample_studies[1])
    urgent = store_study(runtime, sample_studies[0], urgent=True)
    # A study whose only view cannot be decoded fails on its own, not the batch.
    broken_dir = sample_studies[2].parent / "broken"
    broken_dir.mkdir(exist_ok=True)
    source = sorted(sample_studies[2].glob("*.dcm"))[0]
    (broken_dir / source.name).write_bytes(source.read_bytes()[:-4096])  # truncated pixels
    broken = store_study(runtime, broken_dir)

    summaries = triage_batch(max_studies=2)
    assert [s.study_instance_uid for s in summaries] == [urgent, routine]
    assert all(s.status == StudyStatus.TRIAGED.value for s in summaries)
    with runtime.sessions() as session:
        runs = {r.study.study_instance_uid: r for r in session.scalars(select(TriageRun))}
        assert set(runs) == {urgent, routine}
        # One flow run for the batch, each study with its own run, results and outputs.
        assert len({r.flow_run_id for r in runs.values()}) == 1
        for run in runs.values():
            assert run.status is RunStatus.SUCCEEDED and run.study_result is not None
            assert {i.sop_instance_uid for i in run.image_results}
            kinds = {o.kind for o in run.outputs}
            assert {"sr", "summary"} <= kinds  # the default profile (annotated: positive views)
            paths = {Path(o.path).parts[0] for o in run.outputs}
            assert paths == {run.study.study_instance_uid}  # outputs in their own study

    (last,) = triage_batch()
    assert last.study_instance_uid == broken and last.status == StudyStatus.FAILED.value
    assert triage_batch() == []  # the failed study waits for its retry (backoff)
    with runtime.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == broken))
        assert study is not None and study.status is StudyStatus.READY
        assert study.triage_attempts == 1 and study.next_attempt_at is not None
        failures = AuditLog(session).of_type(AuditEventType.TRIAGE_FAILED)
        assert [f.study_instance_uid for f in failures] == [broken]
        assert "decoded" in failures[0].detail["reason"]
        assert failures[0].detail["attempt"] == 1 and "retry_at" in failures[0].detail
        outputs = session.scalars(select(OutputObject)).all()
        assert {o.run.study.study_instance_uid for o in outputs} == {urgent, routine}


def test_reprocessing_waits_for_its_off_peak_window(
    make_settings: Callable[..., Settings], sample_studies: list[Path]
) -> None:
    from db.migrate import upgrade

    hour = dt.datetime.now().hour
    closed = {"reprocess_hours": ((hour + 1) % 24, (hour + 2) % 24)}
    runtime = Runtime.create(make_settings(priority=closed))
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:
        uid = store_study(runtime, sample_studies[1])
        with flow_run_settings(False):
            result = reprocess(statuses=["ready"], requested_by="admin")
        assert result == {
            "selected": 1,
            "triaged": 0,
            "unchanged": 0,
            "failed": 0,
            "deferred": 1,
        }
        with runtime.sessions() as session:
            assert session.scalars(select(TriageRun)).all() == []
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None and study.status is StudyStatus.READY
    finally:
        install_runtime(None)


def test_grad_cam_runs_only_for_views_an_output_draws(
    runtime: Runtime, sample_studies: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test bundle makes wrist views "likely" and hand views "not suspected": only the
    wrist views go through Grad-CAM's backward pass; the hand views have no box."""
    model = runtime.model()
    explained: list[list[str | None]] = []
    real_explain = model.explain

    def explain(images, regions, method="gradcam"):  # type: ignore[no-untyped-def]
        explained.append(list(regions))
        return real_explain(images, regions, method)

    monkeypatch.setattr(model, "explain", explain)
    wrist = store_study(runtime, sample_studies[0])
    hand = store_study(runtime, sample_studies[1])
    summaries = {s.study_instance_uid: s for s in triage_batch()}
    assert summaries[wrist].level == "fracture likely"
    assert summaries[hand].level == "no fracture suspected"
    (regions,) = explained
    assert sorted(r for r in regions if r) == ["wrist", "wrist"]  # two wrist views, no hand
    assert regions.count(None) == 2
