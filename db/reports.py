"""Read-only queries for operators: ``status``, the metrics endpoint and the drift check.

Everything here reads the database the node, its receiving processes and its workers all
write, so the numbers are right whichever process did the work. Like the repositories,
the caller owns the session; nothing here writes.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Integer, Subquery, exists, func, select
from sqlalchemy.orm import Session, aliased

from config.domain.vocabulary import FractureLevel, OutputKind
from db.models import (
    AuditEvent,
    Delivery,
    ImageResult,
    OutputObject,
    Study,
    StudyResult,
    TriageRun,
)
from db.statuses import DeliveryStatus, RunStatus, StudyStatus

#: Study levels that flag a fracture (config.domain's ``is_positive``), as stored.
POSITIVE_LEVELS = tuple(level.value for level in FractureLevel if level.is_positive)
#: The region label of views stage 1 gave no region (e.g. refused by the header gate).
NO_REGION = "none"


@dataclass(frozen=True)
class StudyOverview:
    """One study as ``status`` shows it: its latest run's result, outputs and deliveries."""

    study_instance_uid: str
    status: str
    first_received_at: dt.datetime
    ready_at: dt.datetime | None
    model: str | None = None
    run_status: str | None = None
    run_error: str | None = None
    region: str | None = None
    fracture_probability: float | None = None
    level: str | None = None
    not_assessed_reason: str | None = None
    #: Output kind -> how many the latest run produced.
    outputs: dict[str, int] = field(default_factory=dict)
    #: Destination -> delivery status -> how many of the latest run's outputs.
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeStatus:
    """Counts over the whole database, and the latest studies in detail."""

    studies: dict[str, int]
    deliveries: dict[str, int]
    #: Every output kind, produced ever (zero included, so a kind switched off shows).
    outputs: dict[str, int]
    models: dict[str, int]
    latest: list[StudyOverview]


def _latest_run_ids(study_ids: Sequence[int] | None = None) -> Subquery:
    """Subquery: (study_id, id of its latest run)."""
    query = select(TriageRun.study_id, func.max(TriageRun.id).label("run_id")).group_by(
        TriageRun.study_id
    )
    if study_ids is not None:
        query = query.where(TriageRun.study_id.in_(list(study_ids)))
    return query.subquery()


def study_overviews(session: Session, study_instance_uids: Sequence[str]) -> list[StudyOverview]:
    """The studies named, in the order given; unknown UIDs are left out."""
    studies = {
        study.study_instance_uid: study
        for study in session.scalars(
            select(Study).where(Study.study_instance_uid.in_(list(study_instance_uids)))
        )
    }
    latest = _latest_run_ids([study.id for study in studies.values()])
    rows = session.execute(
        select(latest.c.study_id, TriageRun, StudyResult)
        .join(TriageRun, TriageRun.id == latest.c.run_id)
        .outerjoin(StudyResult, StudyResult.run_id == TriageRun.id)
    ).all()
    runs = {study_id: (run, result) for study_id, run, result in rows}
    run_ids = [run.id for run, _ in runs.values()]
    outputs, deliveries = _outputs_of_runs(session, run_ids)
    overviews = []
    for uid in study_instance_uids:
        study = studies.get(uid)
        if study is None:
            continue
        run, result = runs.get(study.id, (None, None))
        overviews.append(_overview(study, run, result, outputs, deliveries))
    return overviews


def _overview(
    study: Study,
    run: TriageRun | None,
    result: StudyResult | None,
    outputs: dict[int, dict[str, int]],
    deliveries: dict[int, dict[str, dict[str, int]]],
) -> StudyOverview:
    base = StudyOverview(
        study_instance_uid=study.study_instance_uid,
        status=str(study.status),
        first_received_at=study.first_received_at,
        ready_at=study.ready_at,
    )
    if run is None:
        return base
    return StudyOverview(
        **{
            **base.__dict__,
            "model": f"{run.model_name} {run.model_version}",
            "run_status": str(run.status),
            "run_error": run.error,
            "region": result.region if result else None,
            "fracture_probability": result.fracture_probability if result else None,
            "level": result.level if result else None,
            "not_assessed_reason": result.not_assessed_reason if result else None,
            "outputs": outputs.get(run.id, {}),
            "deliveries": deliveries.get(run.id, {}),
        }
    )


def _outputs_of_runs(
    session: Session, run_ids: Sequence[int]
) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, dict[str, int]]]]:
    """Per run: outputs by kind, and deliveries by destination and status."""
    outputs: dict[int, dict[str, int]] = defaultdict(dict)
    deliveries: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    if not run_ids:
        return outputs, deliveries
    for run_id, kind, count in session.execute(
        select(OutputObject.run_id, OutputObject.kind, func.count())
        .where(OutputObject.run_id.in_(list(run_ids)))
        .group_by(OutputObject.run_id, OutputObject.kind)
    ):
        outputs[run_id][str(kind)] = count
    for run_id, destination, status, count in session.execute(
        select(OutputObject.run_id, Delivery.destination, Delivery.status, func.count())
        .join(Delivery.output)
        .where(OutputObject.run_id.in_(list(run_ids)))
        .group_by(OutputObject.run_id, Delivery.destination, Delivery.status)
    ):
        deliveries[run_id][destination][str(status)] = count
    return outputs, {run: dict(by_destination) for run, by_destination in deliveries.items()}


def node_status(session: Session, latest: int = 10) -> NodeStatus:
    """What ``fracture-triage status`` shows: counts, and the ``latest`` studies received."""
    studies = session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
    deliveries = session.execute(
        select(Delivery.status, func.count()).group_by(Delivery.status)
    ).all()
    kinds = dict(
        session.execute(select(OutputObject.kind, func.count()).group_by(OutputObject.kind)).all()
    )
    models = session.execute(
        select(TriageRun.model_name, TriageRun.model_version, func.count()).group_by(
            TriageRun.model_name, TriageRun.model_version
        )
    ).all()
    latest_uids = list(
        session.scalars(select(Study.study_instance_uid).order_by(Study.id.desc()).limit(latest))
    )
    return NodeStatus(
        studies={str(status): count for status, count in studies},
        deliveries={str(status): count for status, count in deliveries},
        outputs={str(kind): kinds.get(kind, 0) for kind in OutputKind},
        models={f"{name} {version}": count for name, version, count in models},
        latest=study_overviews(session, latest_uids),
    )


# -- metrics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadyQueue:
    depth: int
    oldest_ready_at: dt.datetime | None


def studies_by_status(session: Session) -> dict[StudyStatus, int]:
    counts = dict(session.execute(select(Study.status, func.count()).group_by(Study.status)).all())
    return {status: counts.get(status, 0) for status in StudyStatus}


def ready_queue(session: Session) -> ReadyQueue:
    depth, oldest = session.execute(
        select(func.count(), func.min(Study.ready_at)).where(Study.status == StudyStatus.READY)
    ).one()
    if isinstance(oldest, str):  # SQLite gives an aggregate back as text
        oldest = dt.datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return ReadyQueue(depth, oldest)


@dataclass(frozen=True)
class DestinationCount:
    destination: str
    status: str
    count: int


def deliveries_by_destination(session: Session) -> list[DestinationCount]:
    rows = session.execute(
        select(Delivery.destination, Delivery.status, func.count()).group_by(
            Delivery.destination, Delivery.status
        )
    )
    return [DestinationCount(dest, str(status), count) for dest, status, count in rows]


@dataclass(frozen=True)
class AuditTally:
    """How many events of a type were appended, by actor and detail ``status`` (a refused
    instance's DIMSE status)."""

    event_type: str
    actor: str | None
    status: str | None
    count: int


def audit_tallies(
    session: Session, event_types: Sequence[str], after_id: int = 0
) -> tuple[list[AuditTally], int]:
    """Events of ``event_types`` after event ``after_id``, and the last event id counted.

    The trail is append-only and its ids grow in commit order (appends are serialised),
    so a caller that passes back the id it got counts every event exactly once.
    """
    last_id = session.scalar(select(func.max(AuditEvent.id))) or 0
    if last_id <= after_id:
        return [], after_id
    status = AuditEvent.detail["status"].as_string()
    rows = session.execute(
        select(AuditEvent.event_type, AuditEvent.actor, status, func.count())
        .where(
            AuditEvent.id > after_id,
            AuditEvent.id <= last_id,
            AuditEvent.event_type.in_(list(event_types)),
        )
        .group_by(AuditEvent.event_type, AuditEvent.actor, status)
    )
    return [AuditTally(*row) for row in rows], last_id


@dataclass(frozen=True)
class SrLatency:
    """An SR delivered to a destination, and when its study had become ready."""

    delivery_id: int
    destination: str
    ready_at: dt.datetime
    sent_at: dt.datetime

    @property
    def seconds(self) -> float:
        return (self.sent_at - self.ready_at).total_seconds()


def sr_latencies(session: Session, sent_since: dt.datetime) -> list[SrLatency]:
    """SRs sent since ``sent_since`` by the first run after their study became ready.

    Re-runs (``run-study``, reprocess) are left out: their study became ready long
    before, and they say nothing about how fast a new study gets its result.
    """
    earlier = aliased(TriageRun)
    first_after_ready = ~exists().where(
        earlier.study_id == TriageRun.study_id,
        earlier.started_at >= Study.ready_at,
        earlier.id < TriageRun.id,
    )
    rows = session.execute(
        select(Delivery.id, Delivery.destination, Study.ready_at, Delivery.sent_at)
        .join(Delivery.output)
        .join(OutputObject.run)
        .join(TriageRun.study)
        .where(
            OutputObject.kind == OutputKind.SR,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.sent_at >= sent_since,
            Study.ready_at.is_not(None),
            TriageRun.started_at >= Study.ready_at,
            first_after_ready,
        )
        .order_by(Delivery.id)
    )
    return [SrLatency(*row) for row in rows]


# -- drift ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionRate:
    """Over a window: how many items (studies or views) of a region, and how many of them
    had the property counted (flagged positive, or not assessed)."""

    region: str
    total: int
    counted: int

    @property
    def rate(self) -> float:
        return self.counted / self.total if self.total else 0.0


def _window_runs(since: dt.datetime) -> Subquery:
    """Subquery: the latest successful run of each study, finished since ``since``."""
    return (
        select(func.max(TriageRun.id).label("run_id"))
        .where(TriageRun.status == RunStatus.SUCCEEDED, TriageRun.finished_at >= since)
        .group_by(TriageRun.study_id)
        .subquery()
    )


def positive_rates(session: Session, since: dt.datetime) -> list[RegionRate]:
    """Per region: assessed studies triaged since ``since``, and those flagged positive."""
    runs = _window_runs(since)
    positive = func.sum(func.cast(StudyResult.level.in_(POSITIVE_LEVELS), Integer))
    rows = session.execute(
        select(StudyResult.region, func.count(), positive)
        .join(runs, runs.c.run_id == StudyResult.run_id)
        .where(StudyResult.region.is_not(None))
        .group_by(StudyResult.region)
        .order_by(StudyResult.region)
    )
    return [RegionRate(region, total, int(flagged or 0)) for region, total, flagged in rows]


def not_assessed_rates(session: Session, since: dt.datetime) -> list[RegionRate]:
    """Per region stage 1 gave (``none``: no region): views triaged since ``since``, and
    those not assessed (a gate stopped them)."""
    runs = _window_runs(since)
    region = func.coalesce(ImageResult.region, NO_REGION)
    not_assessed = func.sum(func.cast(ImageResult.not_assessed_gate.is_not(None), Integer))
    rows = session.execute(
        select(region, func.count(), not_assessed)
        .join(runs, runs.c.run_id == ImageResult.run_id)
        .group_by(region)
        .order_by(region)
    )
    return [RegionRate(name, total, int(count or 0)) for name, total, count in rows]


def latest_audit_of_types(session: Session, event_types: Sequence[str]) -> list[AuditEvent]:
    """The events of ``event_types``, oldest first (few: the drift check's transitions)."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.event_type.in_(list(event_types)))
            .order_by(AuditEvent.id)
        )
    )
