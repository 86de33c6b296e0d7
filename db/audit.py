"""The audit trail: one vocabulary of events, appended through :class:`AuditLog`.

The trail is tamper-evident: every event stores ``previous_hash`` (the
``event_hash`` of the event appended before it, :data:`GENESIS_HASH` for the
first) and ``event_hash``, the SHA-256 of a canonical JSON of its own content
and ``previous_hash``. Editing, inserting or removing a row breaks the chain at
that row, and :func:`verify_chain` names it. The database refuses UPDATE and
DELETE on ``audit_events`` (triggers, migration 0003), so an edit needs a
superuser who disables the trigger first, and that is what the chain exposes.

The canonical form below is a storage format: changing it invalidates every
stored hash, so it is versioned (``"v"``) and must only ever be extended with a
new version that :func:`event_hash_of` dispatches on.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.models import AuditEvent, utcnow

#: ``previous_hash`` of the first event of a chain.
GENESIS_HASH = "0" * 64
#: Version of the canonical form hashed into ``event_hash``.
HASH_VERSION = 1
#: Key of the PostgreSQL transaction-level advisory lock that serialises appends
#: ("FTAUDIT1" in ASCII; any constant works as long as every writer uses the same).
AUDIT_CHAIN_LOCK_KEY = 0x4654_4155_4449_5431


class AuditEventType(enum.StrEnum):
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    CONNECTION_DROPPED = "connection_dropped"  # a connection that never asked to associate
    ASSOCIATION_ABORTED = "association_aborted"  # by the node: a limit or a timeout
    INSTANCE_STORED = "instance_stored"
    INSTANCE_DUPLICATE = "instance_duplicate"
    INSTANCE_REPLACED = "instance_replaced"
    INSTANCE_REFUSED = "instance_refused"
    STUDY_READY = "study_ready"
    TRIAGE_STARTED = "triage_started"
    TRIAGE_FINISHED = "triage_finished"
    TRIAGE_SKIPPED = "triage_skipped"
    TRIAGE_FAILED = "triage_failed"
    OUTPUT_CREATED = "output_created"
    HEADER_REPAIRED = "header_repaired"  # source attributes written empty in our outputs
    OUTPUT_SENT = "output_sent"
    OUTPUT_SEND_FAILED = "output_send_failed"
    REPROCESS_REQUESTED = "reprocess_requested"
    PURGE = "purge"
    PARTIAL_WRITES_REMOVED = "partial_writes_removed"  # .part files a crash left, at start-up
    DRIFT_DETECTED = "drift_detected"  # a region's rate left the bundle's reference band
    DRIFT_CLEARED = "drift_cleared"  # and came back into it


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


# -- the hash chain -----------------------------------------------------------------------


def canonical_timestamp(value: dt.datetime) -> str:
    """UTC, microseconds always written: ``2026-11-22T10:00:00.000001Z``.

    Both databases keep microseconds; SQLite drops the zone, which
    :class:`db.models.UTCDateTime` re-attaches as UTC, so the text round-trips.
    """
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: audit timestamps must be time-zone aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The detail as it will read back from the JSON column (tuples become lists...)."""
    return json.loads(json.dumps(dict(detail)))


#: The event's columns hashed as they are (the timestamp, detail and chain link aside).
_HASHED_COLUMNS = ("event_type", "outcome", "actor", "study_instance_uid", "sop_instance_uid")


def canonical_content(event: AuditEvent, previous_hash: str | None) -> bytes:
    """The bytes hashed into ``event_hash``: sorted-key compact JSON, UTF-8."""
    content = {name: getattr(event, name) for name in _HASHED_COLUMNS}
    content |= {
        "v": HASH_VERSION,
        "occurred_at": canonical_timestamp(event.occurred_at),
        "detail": event.detail if event.detail is not None else {},
        "previous_hash": previous_hash,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def event_hash_of(event: AuditEvent, previous_hash: str | None = None) -> str:
    """SHA-256 (hex) of ``event``'s content chained to ``previous_hash``.

    ``previous_hash`` defaults to the one stored in the event.
    """
    chained_to = event.previous_hash if previous_hash is None else previous_hash
    return hashlib.sha256(canonical_content(event, chained_to)).hexdigest()


def lock_chain(session: Session) -> None:
    """Make this transaction the only one appending to the chain until it ends.

    Without it two writers could both read the same last hash and fork the chain
    (the unique constraint on ``previous_hash`` would then reject the second).

    - PostgreSQL: a transaction-level advisory lock, released at commit or
      rollback. Taken *before* the last hash is read, and the read runs in READ
      COMMITTED (the default: each statement sees everything committed before it
      started), so it sees the previous holder's event.
    - SQLite: the database has one writer at a time already, but Python's sqlite3
      only sends ``BEGIN`` before the first INSERT/UPDATE/DELETE, so a SELECT of
      the last hash would run outside any write transaction. When this connection
      has no transaction yet, ``BEGIN IMMEDIATE`` takes the write lock now (waiting
      up to the busy timeout); when it has one, an earlier statement of it has
      written and so holds the write lock already. Either way the read below
      happens under the write lock and sees the latest committed event.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK_KEY}
        )
    elif dialect == "sqlite":
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is not None and not dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # pragma: no cover - only the two supported databases
        raise NotImplementedError(f"no audit chain lock for {dialect}")


def last_event_hash(session: Session) -> str:
    last = session.scalar(select(AuditEvent.event_hash).order_by(AuditEvent.id.desc()).limit(1))
    return last or GENESIS_HASH


#: ``session.info`` key: ((transaction, savepoint), hash of the event it appended last).
#: Keyed by the transaction objects themselves (held, so never reused): a new
#: transaction, a savepoint begun or ended, and the chain is locked and read again.
_CHAIN_HEAD = "audit_chain_head"


class AuditLog:
    """Appends audit events in the caller's session (the caller commits).

    Each append locks the chain until the caller's transaction ends (see
    :func:`lock_chain`), so keep audit-writing transactions short.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def record(
        self,
        event_type: AuditEventType,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        actor: str | None = None,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        **detail: Any,
    ) -> AuditEvent:
        session = self._session
        # Pending events of this session (and the caller's other changes) go first, so
        # the last row read below is really the last one.
        session.flush()
        transaction = (session.get_transaction(), session.get_nested_transaction())
        head = session.info.get(_CHAIN_HEAD)
        if head is not None and head[0] == transaction:
            # This transaction holds the chain lock since its first event and appended
            # the last one: the head is known, no lock or read needed again.
            previous_hash = head[1]
        else:
            lock_chain(session)
            previous_hash = last_event_hash(session)
        event = AuditEvent(
            occurred_at=utcnow(),
            event_type=str(event_type),
            outcome=str(outcome),
            actor=actor,
            study_instance_uid=study_instance_uid,
            sop_instance_uid=sop_instance_uid,
            detail=normalise_detail(detail),
            previous_hash=previous_hash,
        )
        event.event_hash = event_hash_of(event)
        session.add(event)
        session.flush()
        session.info[_CHAIN_HEAD] = (transaction, event.event_hash)
        return event

    def for_study(self, study_instance_uid: str) -> list[AuditEvent]:
        query = (
            select(AuditEvent)
            .where(AuditEvent.study_instance_uid == study_instance_uid)
            .order_by(AuditEvent.id)
        )
        return list(self._session.scalars(query))

    def of_type(self, event_type: AuditEventType) -> list[AuditEvent]:
        query = (
            select(AuditEvent)
            .where(AuditEvent.event_type == str(event_type))
            .order_by(AuditEvent.id)
        )
        return list(self._session.scalars(query))


# -- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenEvent:
    id: int
    reason: str


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found: ``broken`` is None when the chain is whole."""

    checked: int
    head_hash: str
    broken: BrokenEvent | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def iter_events(session: Session, batch_size: int = 1000) -> Iterator[AuditEvent]:
    """Every event in append order, in batches (bounded memory on a long trail)."""
    after = 0
    while True:
        batch = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.id > after)
                .order_by(AuditEvent.id)
                .limit(batch_size)
            )
        )
        if not batch:
            return
        yield from batch
        after = batch[-1].id
        session.expunge_all()


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain from the first event; stop at the first broken one.

    The chain proves that no event was edited, removed or inserted between
    events; removing the *last* events leaves a shorter valid chain, which only
    a copy kept elsewhere (the syslog export, or a noted ``head_hash``) reveals.
    """
    expected_previous = GENESIS_HASH
    checked = 0
    for event in iter_events(session):
        if event.previous_hash != expected_previous:
            reason = (
                f"previous_hash {event.previous_hash[:12]}… does not match the event before it "
                f"({expected_previous[:12]}…): an event before it was removed, inserted or "
                "had its hash changed"
            )
            return ChainReport(checked, expected_previous, BrokenEvent(event.id, reason))
        try:
            recomputed = event_hash_of(event)
        except (TypeError, ValueError) as error:
            return ChainReport(
                checked,
                expected_previous,
                BrokenEvent(event.id, f"content cannot be hashed: {error}"),
            )
        if recomputed != event.event_hash:
            reason = (
                "event_hash does not match the event's content: the row was edited after it "
                "was written"
            )
            return ChainReport(checked, expected_previous, BrokenEvent(event.id, reason))
        expected_previous = event.event_hash
        checked += 1
    return ChainReport(checked, expected_previous, None)
