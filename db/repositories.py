"""Repositories: the queries the node and the flows need, in the caller's session.

No repository commits: the caller owns the session and decides the transaction,
so an instance row and its audit event land together or not at all.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from config.domain.findings import ImageFinding, StudyFinding
from config.domain.vocabulary import OutputKind
from db.models import (
    Delivery,
    ImageResult,
    Instance,
    OutputObject,
    Study,
    StudyResult,
    TriageRun,
    utcnow,
)
from db.statuses import DeliveryStatus, RunStatus, StudyStatus

#: Statuses after which a new instance reopens the study for another triage.
_REOPENABLE = (
    StudyStatus.TRIAGING,
    StudyStatus.TRIAGED,
    StudyStatus.FAILED,
    StudyStatus.NOT_TRIAGED,
)


#: Errors of runs a crash or a lost worker left RUNNING (see requeue_interrupted).
RUN_INTERRUPTED = "interrupted"
RUN_WORKER_LOST = "timed out (worker lost)"


@dataclass(frozen=True)
class AbandonedRun:
    """A run a crash or a lost worker left RUNNING, failed by :meth:`requeue_interrupted`."""

    study_instance_uid: str
    run_id: int
    model_name: str
    model_version: str
    reason: str


def _ready_now(now: dt.datetime) -> tuple[Any, ...]:
    """Where-clauses of a READY study that may be triaged at ``now`` (no retry pending)."""
    return (
        Study.status == StudyStatus.READY,
        or_(Study.next_attempt_at.is_(None), Study.next_attempt_at <= now),
    )


def _due(now: dt.datetime) -> tuple[Any, ...]:
    """Where-clauses of a delivery that may be attempted at ``now``."""
    return (
        Delivery.status == DeliveryStatus.PENDING,
        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
    )


class RecordOutcome(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance, same bytes: nothing changes
    REPLACED = "replaced"  # same SOP Instance, different bytes: the file was replaced


@dataclass(frozen=True)
class ReceivedInstance:
    """What the SCP knows about an instance it has just written to the store."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    triageable: bool
    path: str
    size_bytes: int
    sha256: str
    calling_ae_title: str | None
    urgent: bool = False

    def instance_columns(self) -> dict[str, object]:
        """The values of the instance's own row (its study and urgency live elsewhere)."""
        columns = asdict(self)
        del columns["study_instance_uid"], columns["urgent"]
        return columns


@dataclass(frozen=True)
class WrittenOutput:
    """A result object written to the output directory, to be recorded and delivered."""

    kind: OutputKind
    sop_instance_uid: str  # an HL7 message's key is a 2.25 UID too
    path: str  # relative to the output directory
    sop_class_uid: str | None = None  # None for HL7 messages
    series_instance_uid: str | None = None
    destinations: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class FailedAttempt:
    """A failed triage attempt of a study: how many so far, and when it is tried again."""

    attempts: int
    retry_at: dt.datetime | None  # None: failed for good (the study is FAILED)


@dataclass(frozen=True)
class StudyLatestRun:
    """A study and what its latest run said (None when it has no run or no result)."""

    study_instance_uid: str
    region: str | None
    model_version: str | None


class FileArea(enum.StrEnum):
    STORE = "store"  # received instances, relative to the store
    OUTPUTS = "outputs"  # produced objects, relative to the output folder


@dataclass(frozen=True)
class StudyFile:
    study_instance_uid: str
    area: FileArea
    path: str


class StudyRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, study_instance_uid: str) -> Study | None:
        return self._session.scalar(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        )

    def find_instance(self, sop_instance_uid: str) -> Instance | None:
        return self._session.scalar(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
        )

    def _get_or_create(self, study_instance_uid: str, now: dt.datetime) -> Study:
        """The study's row, inserted if absent.

        Several associations often bring the first instances of one study at once:
        INSERT ... ON CONFLICT DO NOTHING lets every one of them go on with the row
        the first one created, instead of failing on the unique constraint.
        """
        study = self.get(study_instance_uid)
        if study is not None:
            return study
        dialect = self._session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        self._session.execute(
            insert(Study)
            .values(
                study_instance_uid=study_instance_uid,
                status=StudyStatus.RECEIVING,
                first_received_at=now,
                last_received_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        study = self.get(study_instance_uid)
        if study is None:  # pragma: no cover - the insert or the other writer created it
            raise LookupError(f"study {study_instance_uid} vanished while being recorded")
        return study

    def record_instance(
        self, received: ReceivedInstance, now: dt.datetime | None = None
    ) -> RecordOutcome:
        """Record a stored instance; reopen its study if it had been triaged already."""
        now = now or utcnow()
        study = self._get_or_create(received.study_instance_uid, now)

        existing = self.find_instance(received.sop_instance_uid)
        if existing is not None and existing.sha256 == received.sha256:
            return RecordOutcome.DUPLICATE

        if existing is None:
            self._session.add(
                Instance(study_id=study.id, received_at=now, **received.instance_columns())
            )
            outcome = RecordOutcome.STORED
        else:
            existing.path = received.path
            existing.size_bytes = received.size_bytes
            existing.sha256 = received.sha256
            existing.transfer_syntax_uid = received.transfer_syntax_uid
            existing.received_at = now
            outcome = RecordOutcome.REPLACED

        study.last_received_at = now
        study.urgent = study.urgent or received.urgent
        if study.status == StudyStatus.READY or (
            # Only a new view reopens a triaged study: our own SR/SCs coming back from
            # the PACS (or anything else no model reads) must not trigger another triage.
            study.status in _REOPENABLE and received.triageable
        ):
            study.status = StudyStatus.RECEIVING
            study.triage_attempts, study.next_attempt_at = 0, None  # a changed study
        return outcome

    def mark_ready(
        self,
        quiet_for: dt.timedelta,
        now: dt.datetime | None = None,
        max_age: dt.timedelta | None = None,
    ) -> list[str]:
        """Move studies from RECEIVING to READY; return their UIDs.

        A study is ready when quiet for ``quiet_for``, or when its first instance is
        older than ``max_age`` (so a study that trickles in forever is still triaged).
        """
        now = now or utcnow()
        due = Study.last_received_at <= now - quiet_for
        if max_age is not None:
            due = or_(due, Study.first_received_at <= now - max_age)
        result = self._session.execute(
            update(Study)
            .where(Study.status == StudyStatus.RECEIVING, due)
            .values(status=StudyStatus.READY, ready_at=now, updated_at=now)
            .returning(Study.study_instance_uid)
        )
        return sorted(result.scalars())

    def claim_for_triage(self, study_instance_uid: str) -> bool:
        """Atomically move a READY study to TRIAGING; False if someone else has it."""
        result = self._session.execute(
            update(Study)
            .where(
                Study.study_instance_uid == study_instance_uid,
                Study.status == StudyStatus.READY,
            )
            .values(status=StudyStatus.TRIAGING, updated_at=utcnow())
        )
        return result.rowcount == 1

    def claim_ready(self, limit: int, among: Sequence[str] | None = None) -> list[str]:
        """Claim up to ``limit`` READY studies (of ``among``, if given): urgent, then oldest.

        Each is claimed with the same conditional update as :meth:`claim_for_triage`,
        so concurrent workers never take one study twice.
        """
        query = select(Study.study_instance_uid).where(*_ready_now(utcnow()))
        if among is not None:
            query = query.where(Study.study_instance_uid.in_(list(among)))
        query = query.order_by(Study.urgent.desc(), Study.ready_at, Study.id).limit(limit)
        return [uid for uid in self._session.scalars(query).all() if self.claim_for_triage(uid)]

    def claim_forced(self, study_instance_uid: str) -> bool:
        """Move a study in any state but TRIAGING to TRIAGING (a deliberate re-run).

        A study someone is triaging right now is left alone, so a reprocess and the
        node's own triage never work on the same study at once.
        """
        result = self._session.execute(
            update(Study)
            .where(
                Study.study_instance_uid == study_instance_uid,
                Study.status != StudyStatus.TRIAGING,
            )
            # A deliberate re-run starts its attempts afresh.
            .values(
                status=StudyStatus.TRIAGING,
                updated_at=utcnow(),
                triage_attempts=0,
                next_attempt_at=None,
            )
        )
        return result.rowcount == 1

    def set_status(
        self, study_instance_uid: str, status: StudyStatus, *, only_from: StudyStatus | None = None
    ) -> bool:
        """Set a study's status, optionally only when it still has ``only_from``."""
        query = update(Study).where(Study.study_instance_uid == study_instance_uid)
        if only_from is not None:
            query = query.where(Study.status == only_from)
        result = self._session.execute(query.values(status=status, updated_at=utcnow()))
        return result.rowcount == 1

    def fail_attempt(
        self,
        study_instance_uid: str,
        *,
        max_attempts: int | None,
        delay: Callable[[int], dt.timedelta],
        now: dt.datetime | None = None,
    ) -> FailedAttempt | None:
        """Count a failed triage attempt: READY again after ``delay(attempts)``, or FAILED
        after ``max_attempts`` (None: never; the fault is not the study's, e.g. Prefect down).

        None when the study has changed meanwhile (a new view reopened it: RECEIVING,
        and its next triage counts afresh).
        """
        now = now or utcnow()
        study = self.get(study_instance_uid)
        if study is None or study.status not in (StudyStatus.TRIAGING, StudyStatus.READY):
            return None
        study.triage_attempts += 1
        study.updated_at = now
        if max_attempts is not None and study.triage_attempts >= max_attempts:
            study.status, study.next_attempt_at = StudyStatus.FAILED, None
            return FailedAttempt(study.triage_attempts, None)
        retry_at = now + delay(study.triage_attempts)
        study.status, study.next_attempt_at = StudyStatus.READY, retry_at
        return FailedAttempt(study.triage_attempts, retry_at)

    def succeeded(self, study_instance_uid: str) -> None:
        """A triage run of the study succeeded: its failed attempts no longer count."""
        self._session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_instance_uid)
            .values(triage_attempts=0, next_attempt_at=None)
        )

    def take_due_retries(self, now: dt.datetime | None = None) -> list[str]:
        """READY studies whose retry time has come; each is returned once (its time cleared)."""
        result = self._session.execute(
            update(Study)
            .where(
                Study.status == StudyStatus.READY,
                Study.next_attempt_at.is_not(None),
                Study.next_attempt_at <= (now or utcnow()),
            )
            .values(next_attempt_at=None)
            .returning(Study.study_instance_uid)
        )
        return sorted(result.scalars())

    def ready_now(self, now: dt.datetime | None = None) -> list[str]:
        """READY studies that may be triaged now (not waiting for a retry)."""
        query = select(Study.study_instance_uid).where(*_ready_now(now or utcnow()))
        return list(self._session.scalars(query.order_by(Study.id)))

    def uids_with_status(self, *statuses: StudyStatus) -> list[str]:
        query = (
            select(Study.study_instance_uid).where(Study.status.in_(statuses)).order_by(Study.id)
        )
        return list(self._session.scalars(query))

    def requeue_interrupted(
        self, stale_after: dt.timedelta | None = None, now: dt.datetime | None = None
    ) -> tuple[list[str], list[AbandonedRun]]:
        """Studies left TRIAGING by a crashed process (or a killed worker) become READY again.

        At start-up every TRIAGING study is interrupted (``stale_after`` None). While
        running, only those claimed longer ago than ``stale_after`` are: their worker
        died without finishing, so the study is picked up again.

        Returns
        -------
        tuple
            The re-queued study UIDs, and the runs they had RUNNING, now FAILED (the
            caller audits them).
        """
        query = select(Study.study_instance_uid).where(Study.status == StudyStatus.TRIAGING)
        if stale_after is not None:
            query = query.where(Study.updated_at <= (now or utcnow()) - stale_after)
        uids = list(self._session.scalars(query.order_by(Study.id)))
        if not uids:
            return [], []
        reason = RUN_INTERRUPTED if stale_after is None else RUN_WORKER_LOST
        running = self._session.execute(
            select(
                Study.study_instance_uid,
                TriageRun.id,
                TriageRun.model_name,
                TriageRun.model_version,
            )
            .join(TriageRun.study)
            .where(TriageRun.status == RunStatus.RUNNING, Study.study_instance_uid.in_(uids))
            .order_by(TriageRun.id)
        ).all()
        self._session.execute(
            update(Study)
            .where(Study.study_instance_uid.in_(uids))
            .values(status=StudyStatus.READY, updated_at=utcnow())
        )
        if running:
            self._session.execute(
                update(TriageRun)
                .where(TriageRun.id.in_([row[1] for row in running]))
                .values(status=RunStatus.FAILED, finished_at=utcnow(), error=reason)
            )
        return uids, [AbandonedRun(*row, reason=reason) for row in running]

    def count_with_status(
        self, study_instance_uids: Sequence[str], statuses: Iterable[StudyStatus]
    ) -> int:
        """How many of the studies named have one of ``statuses`` (e.g. are finished)."""
        query = select(func.count()).where(
            Study.study_instance_uid.in_(list(study_instance_uids)),
            Study.status.in_(list(statuses)),
        )
        return self._session.scalar(query) or 0

    def with_latest_run(
        self,
        received_from: dt.datetime | None = None,
        received_before: dt.datetime | None = None,
        statuses: Sequence[StudyStatus] = (),
    ) -> list[StudyLatestRun]:
        """Studies first received in [``received_from``, ``received_before``) with one of
        ``statuses`` (any, when empty), oldest first, each with its latest run's region
        and model version (the reprocess selection)."""
        latest = (
            select(TriageRun.study_id, func.max(TriageRun.id).label("run_id"))
            .group_by(TriageRun.study_id)
            .subquery()
        )
        query = (
            select(Study.study_instance_uid, StudyResult.region, TriageRun.model_version)
            .outerjoin(latest, latest.c.study_id == Study.id)
            .outerjoin(TriageRun, TriageRun.id == latest.c.run_id)
            .outerjoin(StudyResult, StudyResult.run_id == TriageRun.id)
            .order_by(Study.id)
        )
        if received_from is not None:
            query = query.where(Study.first_received_at >= received_from)
        if received_before is not None:
            query = query.where(Study.first_received_at < received_before)
        if statuses:
            query = query.where(Study.status.in_(list(statuses)))
        return [StudyLatestRun(*row) for row in self._session.execute(query)]

    def files_older_than(self, cutoff: dt.datetime) -> list[StudyFile]:
        """What a purge at ``cutoff`` deletes: received instances older than it, and the
        local copies of outputs older than it whose deliveries are all settled."""
        instances = self._session.execute(
            select(Study.study_instance_uid, Instance.path)
            .join(Instance.study)
            .where(Instance.received_at < cutoff)
        )
        outputs = self._session.execute(
            select(Study.study_instance_uid, OutputObject.path)
            .join(OutputObject.run)
            .join(TriageRun.study)
            .where(
                OutputObject.created_at < cutoff,
                ~OutputObject.deliveries.any(Delivery.status == DeliveryStatus.PENDING),
            )
        )
        return [StudyFile(uid, FileArea.STORE, path) for uid, path in instances] + [
            StudyFile(uid, FileArea.OUTPUTS, path) for uid, path in outputs
        ]

    def instances(
        self, study_instance_uid: str, *, triageable_only: bool = False
    ) -> list[Instance]:
        query = (
            select(Instance)
            .join(Study)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(Instance.series_instance_uid, Instance.id)
        )
        if triageable_only:
            query = query.where(Instance.triageable.is_(True))
        return list(self._session.scalars(query))


@dataclass(frozen=True)
class ImageResultRow:
    sop_instance_uid: str
    region: str | None
    region_probability: float | None
    fracture_probability: float | None
    level: str | None
    not_assessed_gate: str | None = None
    not_assessed_reason: str | None = None
    fracture_type: str | None = None
    fracture_type_probability: float | None = None

    @classmethod
    def of(cls, image: ImageFinding) -> ImageResultRow:
        reason, kind = image.not_assessed, image.fracture_type
        return cls(
            image.sop_instance_uid,
            image.region,
            image.region_probability,
            image.fracture_probability,
            image.level.value if image.level else None,
            str(reason.gate) if reason else None,
            reason.reason if reason else None,
            kind.name if kind else None,
            kind.probability if kind else None,
        )


class RunRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, run_id: int) -> TriageRun:
        run = self._session.get(TriageRun, run_id)
        if run is None:
            raise LookupError(f"no triage run with id {run_id}")
        return run

    def start(
        self,
        study_instance_uid: str,
        *,
        model_name: str,
        model_version: str,
        input_key: str | None = None,
        flow_run_id: str | None = None,
    ) -> TriageRun:
        study = StudyRepository(self._session).get(study_instance_uid)
        if study is None:
            raise LookupError(f"no study {study_instance_uid}")
        run = TriageRun(
            study_id=study.id,
            status=RunStatus.RUNNING,
            model_name=model_name,
            model_version=model_version,
            input_key=input_key,
            flow_run_id=flow_run_id,
            started_at=utcnow(),
        )
        self._session.add(run)
        self._session.flush()
        return run

    def record_results(
        self,
        run: TriageRun,
        *,
        images: Sequence[ImageResultRow],
        finding: StudyFinding,
    ) -> StudyResult:
        for image in images:
            self._session.add(ImageResult(run_id=run.id, **asdict(image)))
        points, reason = finding.operating_points, finding.not_assessed
        result = StudyResult(
            run_id=run.id,
            region=finding.region,
            fracture_probability=finding.fracture_probability,
            level=finding.level.value if finding.level else None,
            threshold_suspected=points.suspected if points else None,
            threshold_likely=points.likely if points else None,
            not_assessed_gate=str(reason.gate) if reason else None,
            not_assessed_reason=reason.reason if reason else None,
        )
        self._session.add(result)
        return result

    def finish(self, run: TriageRun, status: RunStatus, error: str | None = None) -> None:
        run.status = status
        run.error = error
        run.finished_at = utcnow()

    def add_output(self, run: TriageRun, written: WrittenOutput) -> OutputObject:
        """Record an output and queue one delivery per destination (the outbox)."""
        output = OutputObject(
            run_id=run.id,
            kind=written.kind,
            sop_class_uid=written.sop_class_uid,
            sop_instance_uid=written.sop_instance_uid,
            series_instance_uid=written.series_instance_uid,
            path=written.path,
        )
        self._session.add(output)
        self._session.flush()
        for destination in written.destinations:
            self._session.add(
                Delivery(
                    output_id=output.id, destination=destination, status=DeliveryStatus.PENDING
                )
            )
        return output

    def pending_deliveries(self, run_id: int | None = None) -> list[Delivery]:
        query = select(Delivery).where(Delivery.status == DeliveryStatus.PENDING)
        if run_id is not None:
            query = query.join(OutputObject).where(OutputObject.run_id == run_id)
        return list(self._session.scalars(query.order_by(Delivery.id)))

    def due_deliveries(
        self, now: dt.datetime | None = None, run_id: int | None = None
    ) -> list[Delivery]:
        """Pending deliveries whose backoff has expired (all of a run's when ``run_id``)."""
        query = select(Delivery).where(*_due(now or utcnow()))
        if run_id is not None:
            query = query.join(OutputObject).where(OutputObject.run_id == run_id)
        return list(self._session.scalars(query.order_by(Delivery.id)))

    def claim_due_deliveries(
        self, lease: dt.timedelta, now: dt.datetime | None = None, run_id: int | None = None
    ) -> list[Delivery]:
        """Claim the due deliveries for one sender: no other process sends them meanwhile.

        Each due delivery is claimed by a conditional UPDATE that moves its next attempt
        ``lease`` into the future; only the sender whose UPDATE changed the row sends it
        (the node's outbox thread, a worker's send task and ``retry-outbox`` may look at
        once). The caller commits the claim before sending and records the outcome with
        :meth:`mark_delivery`; a sender that dies leaves the row to be claimed again once
        the lease has run out.
        """
        now = now or utcnow()
        due = self.due_deliveries(now, run_id)
        if not due:
            return []
        claimed = set(
            self._session.scalars(
                update(Delivery)
                .where(Delivery.id.in_([d.id for d in due]), *_due(now))
                .values(next_attempt_at=now + lease)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
        )
        return [delivery for delivery in due if delivery.id in claimed]

    def mark_delivery(
        self,
        delivery: Delivery,
        status: DeliveryStatus,
        error: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> None:
        """Record one attempt: sent, failed for good, or pending again until ``retry_at``."""
        delivery.status = status
        delivery.attempts += 1
        delivery.last_error = error
        delivery.next_attempt_at = retry_at if status == DeliveryStatus.PENDING else None
        if status == DeliveryStatus.SENT:
            delivery.sent_at = utcnow()

    def is_our_output(self, sop_instance_uid: str) -> bool:
        """True for objects this node produced (they are never triaged when they come back)."""
        query = select(OutputObject.id).where(OutputObject.sop_instance_uid == sop_instance_uid)
        return self._session.scalar(query) is not None

    def latest_for_study(self, study_instance_uid: str) -> TriageRun | None:
        query = (
            select(TriageRun)
            .join(Study)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(TriageRun.id.desc())
            .limit(1)
        )
        return self._session.scalar(query)

    def count_finished_since(self, started_at: dt.datetime) -> int:
        """Runs started at or after ``started_at`` that have ended (a progress bar's count)."""
        query = select(func.count()).where(
            TriageRun.started_at >= started_at, TriageRun.status != RunStatus.RUNNING
        )
        return self._session.scalar(query) or 0

    def lost_flow_run_ids(self, study_instance_uid: str) -> list[str]:
        """Prefect flow runs of the study's runs that a crash or a lost worker abandoned."""
        query = (
            select(TriageRun.flow_run_id)
            .join(Study, TriageRun.study_id == Study.id)
            .where(
                Study.study_instance_uid == study_instance_uid,
                TriageRun.status == RunStatus.FAILED,
                TriageRun.error.in_([RUN_INTERRUPTED, RUN_WORKER_LOST]),
                TriageRun.flow_run_id.is_not(None),
            )
            .order_by(TriageRun.id)
        )
        return [uid for uid in self._session.scalars(query) if uid]

    def succeeded_with_input_key(self, input_key: str) -> TriageRun | None:
        """The successful run that already triaged these instances with this model, if any."""
        query = (
            select(TriageRun)
            .where(TriageRun.input_key == input_key, TriageRun.status == RunStatus.SUCCEEDED)
            .order_by(TriageRun.id.desc())
            .limit(1)
        )
        return self._session.scalar(query)

    def previous_outputs(
        self,
        study_instance_uid: str,
        before_run_id: int,
        kinds: Iterable[OutputKind] | None = None,
    ) -> list[OutputObject]:
        """Outputs (of ``kinds``, or all) of the study's latest successful run before a run.

        A new run supersedes them: its SR names the old SR as predecessor, and a
        rejection note withdraws the old objects at the destinations.
        """
        previous = (
            select(func.max(TriageRun.id))
            .join(Study, TriageRun.study_id == Study.id)
            .where(
                Study.study_instance_uid == study_instance_uid,
                TriageRun.id < before_run_id,
                TriageRun.status == RunStatus.SUCCEEDED,
            )
            .scalar_subquery()
        )
        query = select(OutputObject).where(OutputObject.run_id == previous)
        if kinds is not None:
            query = query.where(OutputObject.kind.in_(list(kinds)))
        return list(self._session.scalars(query.order_by(OutputObject.id)))

    def previous_sr_output(
        self, study_instance_uid: str, before_run_id: int
    ) -> OutputObject | None:
        """The SR of the study's latest successful run before ``before_run_id``, if any.

        A re-run's report supersedes it (Predecessor Documents Sequence).
        """
        reports = self.previous_outputs(study_instance_uid, before_run_id, [OutputKind.SR])
        return reports[-1] if reports else None
