"""The audit trail is append-only and tamper-evident, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.audit import (
    GENESIS_HASH,
    AuditEventType,
    AuditLog,
    Outcome,
    canonical_timestamp,
    event_hash_of,
    verify_chain,
)
from db.engine import make_engine, make_session_factory
from db.migrate import downgrade, upgrade
from db.models import AuditEvent
from db.repositories import ReceivedInstance, StudyRepository
from db.roles import DEFAULT_APP_ROLE
from tests.peers import scratch_postgres_database


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with scratch_postgres_database() as url:
        engine = make_engine(url)
        upgrade(engine)
        yield engine
        engine.dispose()


def record_events(sessions: sessionmaker[Session], count: int, study: str = "1.2.3") -> list[int]:
    ids = []
    for number in range(count):
        with sessions.begin() as session:
            event = AuditLog(session).record(
                AuditEventType.INSTANCE_STORED,
                actor="MODALITY",
                study_instance_uid=study,
                sop_instance_uid=f"{study}.1.{number}",
                number=number,
            )
            ids.append(event.id)
    return ids


def run_at_once(count: int, work: Callable[[int], None]) -> None:
    """``work(0..count-1)`` in ``count`` threads released together; their errors raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(worker: int) -> None:
        try:
            start.wait()
            work(worker)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors


def tamper(engine: Engine, statement: str, **params: object) -> None:
    """Run ``statement`` as a superuser who switched the append-only trigger off."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"
            )
            connection.execute(text(statement), params)
            connection.exec_driver_sql(
                "ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"
            )
        else:
            triggers = dict(
                connection.execute(
                    text(
                        "SELECT name, sql FROM sqlite_master "
                        "WHERE type = 'trigger' AND tbl_name = 'audit_events'"
                    )
                ).all()
            )
            assert set(triggers) == {"audit_events_no_update", "audit_events_no_delete"}
            for name in triggers:
                connection.exec_driver_sql(f"DROP TRIGGER {name}")
            connection.execute(text(statement), params)
            for sql in triggers.values():
                connection.exec_driver_sql(sql)


# -- append-only ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'failure'",
        "UPDATE audit_events SET detail = '{}' WHERE id = (SELECT min(id) FROM audit_events)",
        "DELETE FROM audit_events",
    ],
)
def test_update_and_delete_are_rejected_by_the_database(
    engine: Engine, sessions: sessionmaker[Session], statement: str
) -> None:
    record_events(sessions, 3)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 3
        assert verify_chain(session).ok


def test_orm_update_of_an_event_is_rejected(sessions: sessionmaker[Session]) -> None:
    (event_id,) = record_events(sessions, 1)
    with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as session:
        session.get(AuditEvent, event_id).actor = "someone else"


def test_truncate_is_rejected_on_postgresql(pg_engine: Engine) -> None:
    record_events(make_session_factory(pg_engine), 2)
    with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE audit_events")


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"],
)
def test_replica_mode_does_not_switch_the_triggers_off(pg_engine: Engine, statement: str) -> None:
    """A superuser's session_replication_role = replica skips ordinary triggers, not ALWAYS."""
    record_events(make_session_factory(pg_engine), 2)
    with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        connection.exec_driver_sql(statement)
    with pg_engine.connect() as connection:
        fires = connection.exec_driver_sql(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass "
            "AND NOT tgisinternal ORDER BY tgname"
        ).all()
    assert fires == [("audit_events_append_only", "A"), ("audit_events_no_truncate", "A")]


# -- the hash chain ------------------------------------------------------------------------


def test_chain_links_every_event_and_round_trips(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        audit = AuditLog(session)
        first = audit.record(AuditEventType.STUDY_READY, study_instance_uid="1.2.3", views=2)
        # Detail as the JSON column gives it back: tuples are lists, keys strings, text as is.
        second = audit.record(
            AuditEventType.TRIAGE_FINISHED,
            actor="triage",
            study_instance_uid="1.2.3",
            region="wrist",
            probability=0.1 + 0.2,
            views=("AP", "LAT"),
            nested={"b": [1, {"c": None}], "a": "Ünïcödé ✓"},
        )
        third = audit.record(AuditEventType.OUTPUT_SEND_FAILED, Outcome.FAILURE, reason="down")
        hashes = [first.event_hash, second.event_hash, third.event_hash]
        assert first.previous_hash == GENESIS_HASH
        assert second.previous_hash == first.event_hash
        assert third.previous_hash == second.event_hash
        assert second.detail["views"] == ["AP", "LAT"]
    with sessions() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        assert [event_hash_of(event) for event in events] == hashes
        assert events[1].detail["probability"] == 0.1 + 0.2
        report = verify_chain(session)
    assert report.ok and report.checked == 3 and report.head_hash == hashes[-1]


def test_microseconds_and_zone_survive_the_round_trip(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        event = AuditLog(session).record(AuditEventType.STUDY_READY, study_instance_uid="1.2.3")
        written = canonical_timestamp(event.occurred_at)
    with sessions() as session:
        (read,) = AuditLog(session).for_study("1.2.3")
        assert canonical_timestamp(read.occurred_at) == written
        assert read.occurred_at.utcoffset() == dt.timedelta(0)
    assert written.endswith("Z") and len(written) == len("2026-11-22T10:00:00.000000Z")


def test_empty_trail_verifies(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        report = verify_chain(session)
    assert report.ok and report.checked == 0 and report.head_hash == GENESIS_HASH


def test_hand_edited_row_is_detected_and_named(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    ids = record_events(sessions, 5)
    tamper(engine, "UPDATE audit_events SET actor = 'NOBODY' WHERE id = :id", id=ids[2])
    with sessions() as session:
        assert session.get(AuditEvent, ids[2]).actor == "NOBODY"
        report = verify_chain(session)
    assert not report.ok
    assert report.broken.id == ids[2]
    assert "edited" in report.broken.reason
    assert report.checked == 2


def test_edited_detail_is_detected(engine: Engine, sessions: sessionmaker[Session]) -> None:
    ids = record_events(sessions, 3)
    tamper(
        engine,
        "UPDATE audit_events SET detail = :detail WHERE id = :id",
        detail='{"number": 7}',
        id=ids[1],
    )
    with sessions() as session:
        report = verify_chain(session)
    assert report.broken is not None and report.broken.id == ids[1]


def test_removed_row_is_detected_at_the_event_after_it(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    ids = record_events(sessions, 4)
    tamper(engine, "DELETE FROM audit_events WHERE id = :id", id=ids[1])
    with sessions() as session:
        report = verify_chain(session)
    assert report.broken is not None and report.broken.id == ids[2]
    assert "previous_hash" in report.broken.reason


def test_rehashed_edit_is_detected_at_the_next_event(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    ids = record_events(sessions, 3)
    with sessions() as session:
        event = session.get(AuditEvent, ids[0])
        session.expunge(event)
    event.actor = "NOBODY"
    forged = event_hash_of(event)
    tamper(
        engine,
        "UPDATE audit_events SET actor = 'NOBODY', event_hash = :hash WHERE id = :id",
        hash=forged,
        id=ids[0],
    )
    with sessions() as session:
        report = verify_chain(session)
    assert report.broken is not None and report.broken.id == ids[1]


def test_concurrent_writers_leave_one_unbroken_chain(sessions: sessionmaker[Session]) -> None:
    threads_count, per_thread = 4, 50

    def write(worker: int) -> None:
        for number in range(per_thread):
            study = f"1.2.{worker}"
            with sessions.begin() as session:
                if number % 2:
                    # The SCP's shape: the instance row is written first, then the event.
                    StudyRepository(session).record_instance(
                        ReceivedInstance(
                            study_instance_uid=study,
                            series_instance_uid=f"{study}.1",
                            sop_instance_uid=f"{study}.1.{number}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                            transfer_syntax_uid="1.2.840.10008.1.2.1",
                            modality="DX",
                            triageable=True,
                            path=f"{study}/{number}.dcm",
                            size_bytes=1,
                            sha256="a" * 64,
                            calling_ae_title="MODALITY",
                        )
                    )
                AuditLog(session).record(
                    AuditEventType.INSTANCE_STORED,
                    actor=f"W{worker}",
                    study_instance_uid=study,
                    number=number,
                )

    run_at_once(threads_count, write)
    with sessions() as session:
        report = verify_chain(session)
        previous = list(session.scalars(select(AuditEvent.previous_hash)))
    assert report.ok, report.broken
    assert report.checked == threads_count * per_thread
    assert len(set(previous)) == len(previous)


def test_upgrade_chains_events_written_before_the_chain(engine: Engine) -> None:
    downgrade(engine, "0002")
    with engine.begin() as connection:
        for number in range(3):
            connection.execute(
                text(
                    "INSERT INTO audit_events (occurred_at, event_type, outcome, detail) "
                    "VALUES (:at, 'study_ready', 'success', :detail)"
                ),
                {
                    "at": dt.datetime(2026, 1, 1, 12, 0, 0, 123456 + number, tzinfo=dt.UTC),
                    "detail": f'{{"number": {number}}}',
                },
            )
    upgrade(engine)
    sessions = make_session_factory(engine)
    record_events(sessions, 1)
    with sessions() as session:
        report = verify_chain(session)
    assert report.ok and report.checked == 4


# -- the application role (PostgreSQL) -----------------------------------------------------


def test_app_role_may_insert_and_select_but_not_change_events(pg_engine: Engine) -> None:
    engine, sessions = pg_engine, make_session_factory(pg_engine)
    record_events(sessions, 1)
    with sessions.begin() as session:
        session.execute(text(f"SET LOCAL ROLE {DEFAULT_APP_ROLE}"))
        assert session.scalar(text("SELECT current_user")) == DEFAULT_APP_ROLE
        # What the node does: an instance row and its event, in one transaction.
        StudyRepository(session).record_instance(
            ReceivedInstance(
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.1",
                sop_instance_uid="1.2.3.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="DX",
                triageable=True,
                path="x.dcm",
                size_bytes=1,
                sha256="a" * 64,
                calling_ae_title="MODALITY",
            )
        )
        AuditLog(session).record(AuditEventType.INSTANCE_STORED, study_instance_uid="1.2.3")
        assert len(AuditLog(session).for_study("1.2.3")) == 2
    for statement in (
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
        "DROP TRIGGER audit_events_append_only ON audit_events",
    ):
        with pytest.raises(DBAPIError) as raised, engine.begin() as connection:
            connection.exec_driver_sql(f"SET LOCAL ROLE {DEFAULT_APP_ROLE}")
            connection.exec_driver_sql(statement)
        message = str(raised.value)
        # Refused for lack of privilege or ownership, before any trigger runs.
        assert "permission denied" in message or "must be owner" in message, message
    with sessions() as session:
        report = verify_chain(session)
    assert report.ok and report.checked == 2


def test_events_of_one_transaction_read_the_chain_head_once(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Later events of a transaction chain to the head it appended (the lock is held),
    several AuditLogs of one session included; a savepoint rolled back is not trusted."""
    record_events(sessions, 2)
    head_reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT AUDIT_EVENTS.EVENT_HASH"):
            head_reads.append(statement)

    sqlalchemy_event.listen(engine, "before_cursor_execute", count)
    try:
        with sessions.begin() as session:
            first, second = AuditLog(session), AuditLog(session)
            for number in range(3):
                for audit in (first, second):
                    audit.record(AuditEventType.OUTPUT_CREATED, actor="triage", number=number)
        assert len(head_reads) == 1
        with sessions.begin() as session:
            audit = AuditLog(session)
            audit.record(AuditEventType.OUTPUT_SENT, actor="pacs")
            savepoint = session.begin_nested()
            audit.record(AuditEventType.OUTPUT_SENT, actor="rolled back")
            savepoint.rollback()
            audit.record(AuditEventType.OUTPUT_SENT, actor="after the savepoint")
        assert len(head_reads) == 4  # the new transaction, the savepoint, after it
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", count)
    with sessions() as session:
        report = verify_chain(session)
        actors = list(session.scalars(select(AuditEvent.actor).order_by(AuditEvent.id)))
    assert report.ok, report.broken
    assert report.checked == 2 + 6 + 2
    assert "rolled back" not in actors and actors[-1] == "after the savepoint"


def test_concurrent_transactions_of_several_events_leave_one_chain(
    sessions: sessionmaker[Session],
) -> None:
    threads_count, transactions, per_transaction = 3, 15, 4

    def write(worker: int) -> None:
        for number in range(transactions):
            with sessions.begin() as session:
                for index in range(per_transaction):
                    AuditLog(session).record(
                        AuditEventType.OUTPUT_SENT, actor=f"W{worker}", n=number, i=index
                    )

    run_at_once(threads_count, write)
    with sessions() as session:
        report = verify_chain(session)
    assert report.ok, report.broken
    assert report.checked == threads_count * transactions * per_transaction
