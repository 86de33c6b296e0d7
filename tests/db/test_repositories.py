"""The audit DB on SQLite and on a real PostgreSQL: migrations and repositories."""

from __future__ import annotations

import dataclasses
import datetime as dt

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from config.domain.vocabulary import OutputKind
from db.audit import AuditEventType, AuditLog
from db.migrate import alembic_config, current_revision, downgrade, upgrade
from db.models import Base, DeliveryStatus, RunStatus, StudyStatus
from db.repositories import (
    RUN_INTERRUPTED,
    AbandonedRun,
    ReceivedInstance,
    RecordOutcome,
    RunRepository,
    StudyRepository,
    WrittenOutput,
)


def received(
    sop: str, sha: str = "a" * 64, study: str = "1.2.3", triageable: bool = True
) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX",
        triageable=triageable,
        path=f"{study}/{study}.1/{sop}.dcm",
        size_bytes=123,
        sha256=sha,
        calling_ae_title="MODALITY",
    )


def test_one_linear_history_whose_head_matches_the_models(engine: Engine) -> None:
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    assert len(scripts.get_heads()) == 1
    revisions = list(scripts.walk_revisions())  # head first
    assert all(len(r._all_down_revisions) <= 1 for r in revisions)  # no merges
    assert [r.revision for r in reversed(revisions)] == [
        f"{n:04d}" for n in range(1, len(revisions) + 1)
    ]
    assert current_revision(engine) == scripts.get_current_head()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_downgrade_removes_every_table(engine: Engine) -> None:
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert "audit_events" in inspect(engine).get_table_names()


def test_duplicate_and_changed_resend(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        studies = StudyRepository(session)
        assert studies.record_instance(received("1.2.3.1.1")) is RecordOutcome.STORED
        assert studies.record_instance(received("1.2.3.1.1")) is RecordOutcome.DUPLICATE
        assert (
            studies.record_instance(received("1.2.3.1.1", sha="b" * 64)) is RecordOutcome.REPLACED
        )
    with sessions() as session:
        instances = StudyRepository(session).instances("1.2.3")
        assert [i.sha256 for i in instances] == ["b" * 64]


def test_quiet_study_becomes_ready_once_and_is_claimed_once(
    sessions: sessionmaker[Session],
) -> None:
    start = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        StudyRepository(session).record_instance(received("1.2.3.1.1"), now=start)
    with sessions.begin() as session:
        studies = StudyRepository(session)
        assert (
            studies.mark_ready(dt.timedelta(seconds=30), now=start + dt.timedelta(seconds=10)) == []
        )
        assert studies.mark_ready(
            dt.timedelta(seconds=30), now=start + dt.timedelta(seconds=31)
        ) == ["1.2.3"]
        assert (
            studies.mark_ready(dt.timedelta(seconds=30), now=start + dt.timedelta(seconds=60)) == []
        )
    with sessions.begin() as session:
        assert StudyRepository(session).claim_for_triage("1.2.3") is True
    with sessions.begin() as session:
        assert StudyRepository(session).claim_for_triage("1.2.3") is False
        assert StudyRepository(session).get("1.2.3").status is StudyStatus.TRIAGING


def test_late_instance_reopens_a_triaged_study(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        studies = StudyRepository(session)
        studies.record_instance(received("1.2.3.1.1"))
        studies.set_status("1.2.3", StudyStatus.TRIAGED)
        studies.record_instance(received("1.2.3.1.2", triageable=False))
        assert studies.get("1.2.3").status is StudyStatus.TRIAGED  # e.g. our SR coming back
        studies.record_instance(received("1.2.3.1.3"))
        assert studies.get("1.2.3").status is StudyStatus.RECEIVING


def test_interrupted_triage_is_requeued(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        studies = StudyRepository(session)
        studies.record_instance(received("1.2.3.1.1"))
        studies.set_status("1.2.3", StudyStatus.TRIAGING)
        run = RunRepository(session).start("1.2.3", model_name="m", model_version="1")
        run_id = run.id
    with sessions.begin() as session:
        uids, abandoned = StudyRepository(session).requeue_interrupted()
    assert uids == ["1.2.3"]
    assert abandoned == [AbandonedRun("1.2.3", run_id, "m", "1", RUN_INTERRUPTED)]
    with sessions() as session:
        assert StudyRepository(session).get("1.2.3").status is StudyStatus.READY
        assert RunRepository(session).get(run_id).status is RunStatus.FAILED


def test_outputs_queue_deliveries_and_are_recognised(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        StudyRepository(session).record_instance(received("1.2.3.1.1"))
        runs = RunRepository(session)
        run = runs.start("1.2.3", model_name="m", model_version="1")
        runs.add_output(
            run,
            WrittenOutput(
                kind=OutputKind.SR,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                sop_instance_uid="1.2.3.9.1",
                series_instance_uid="1.2.3.9",
                path="1.2.3/1.2.3.9/1.2.3.9.1.dcm",
                destinations=("pacs", "archive"),
            ),
        )
    with sessions.begin() as session:
        runs = RunRepository(session)
        pending = runs.pending_deliveries()
        assert sorted(d.destination for d in pending) == ["archive", "pacs"]
        runs.mark_delivery(pending[0], DeliveryStatus.SENT)
        assert runs.is_our_output("1.2.3.9.1") and not runs.is_our_output("1.2.3.1.1")
    with sessions() as session:
        assert len(RunRepository(session).pending_deliveries()) == 1


def test_audit_events_round_trip_with_aware_timestamps(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        AuditLog(session).record(
            AuditEventType.STUDY_READY, study_instance_uid="1.2.3", actor="watcher", views=2
        )
    with sessions() as session:
        (event,) = AuditLog(session).for_study("1.2.3")
        assert event.event_type == "study_ready"
        assert event.detail == {"views": 2}
        assert event.occurred_at.tzinfo is not None


def test_a_study_whose_worker_died_is_picked_up_again(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        studies = StudyRepository(session)
        studies.record_instance(received("1.2.3.1.1"))
        studies.set_status("1.2.3", StudyStatus.TRIAGING)
        run_id = RunRepository(session).start("1.2.3", model_name="m", model_version="1").id
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with sessions.begin() as session:
        studies = StudyRepository(session)
        assert studies.requeue_interrupted(dt.timedelta(minutes=30), now=soon) == ([], [])
        assert studies.requeue_interrupted(dt.timedelta(minutes=30), now=later)[0] == ["1.2.3"]
    with sessions() as session:
        assert StudyRepository(session).get("1.2.3").status is StudyStatus.READY
        run = RunRepository(session).get(run_id)
        assert run.status is RunStatus.FAILED and "worker lost" in (run.error or "")


def test_a_study_that_trickles_in_forever_is_ready_after_its_max_age(
    sessions: sessionmaker[Session],
) -> None:
    start = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        studies = StudyRepository(session)
        for minute in range(0, 70, 5):  # a new view every 5 minutes: never quiet for 30 s
            studies.record_instance(
                received(f"1.2.3.1.{minute + 1}"), now=start + dt.timedelta(minutes=minute)
            )
    late = start + dt.timedelta(minutes=65, seconds=10)
    with sessions.begin() as session:
        studies = StudyRepository(session)
        assert studies.mark_ready(dt.timedelta(seconds=30), now=late) == []
        assert studies.mark_ready(
            dt.timedelta(seconds=30), now=late, max_age=dt.timedelta(hours=1)
        ) == ["1.2.3"]


def test_claim_ready_takes_urgent_studies_first_and_each_once(
    sessions: sessionmaker[Session],
) -> None:
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    with sessions.begin() as session:
        studies = StudyRepository(session)
        for number, (study, urgent) in enumerate(
            [("1.1", False), ("1.2", True), ("1.3", False), ("1.4", False)]
        ):
            instance = dataclasses.replace(received(f"{study}.9", study=study), urgent=urgent)
            studies.record_instance(instance, now=now + dt.timedelta(seconds=number))
        studies.mark_ready(dt.timedelta(seconds=0), now=now + dt.timedelta(minutes=1))
        studies.set_status("1.4", StudyStatus.TRIAGED)
    with sessions.begin() as session:
        assert StudyRepository(session).claim_ready(2) == ["1.2", "1.1"]
    with sessions.begin() as session:
        studies = StudyRepository(session)
        assert studies.claim_ready(5, among=["1.1", "1.3", "1.4"]) == ["1.3"]
        assert studies.claim_ready(5) == []


def test_the_watcher_audits_an_interrupted_run_and_the_study_ready_again(
    sessions: sessionmaker[Session],
) -> None:
    from dicom_node.receive.completion import StudyCompletionWatcher

    with sessions.begin() as session:
        studies = StudyRepository(session)
        studies.record_instance(received("1.2.3.1.1"))
        studies.set_status("1.2.3", StudyStatus.TRIAGING)
        run_id = RunRepository(session).start("1.2.3", model_name="m", model_version="1").id
    handed_on: list[str] = []
    watcher = StudyCompletionWatcher(sessions, dt.timedelta(seconds=30), handed_on.append)
    assert watcher.recover() == ["1.2.3"] and handed_on == ["1.2.3"]
    with sessions() as session:
        events = [(e.event_type, e.outcome, e.detail) for e in AuditLog(session).for_study("1.2.3")]
    assert events[-2][:2] == ("triage_failed", "failure")
    assert events[-2][2] == {
        "run_id": run_id,
        "model_name": "m",
        "model_version": "1",
        "reason": RUN_INTERRUPTED,
    }
    assert events[-1][0] == "study_ready"
