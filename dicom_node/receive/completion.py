"""Study completion: a study is ready once no instance has arrived for a quiet period."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from db.audit import AuditEventType, AuditLog, Outcome
from db.models import StudyStatus
from db.repositories import AbandonedRun, StudyRepository
from dicom_node.periodic import PeriodicWorker

logger = logging.getLogger(__name__)

ReadyCallback = Callable[[str], None]


class StudyCompletionWatcher(PeriodicWorker):
    """Polls the DB for quiet studies, marks them READY and hands their UIDs on.

    The DB is the source of truth, so a restart finds studies that became ready
    (or were being triaged) while the node was down.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        quiet_for: dt.timedelta,
        on_ready: ReadyCallback,
        poll_interval: float | None = None,
        max_age: dt.timedelta | None = None,
        triage_timeout: dt.timedelta | None = None,
    ) -> None:
        super().__init__(
            "study-completion",
            poll_interval or min(1.0, quiet_for.total_seconds() / 4),
            first_round_at_start=False,  # recover() has just looked
            stop_timeout=10.0,
        )
        self._sessions = session_factory
        self._quiet_for = quiet_for
        self._max_age = max_age
        self._triage_timeout = triage_timeout
        self._on_ready = on_ready

    def recover(self) -> list[str]:
        """Re-queue studies interrupted by a crash and hand on every READY study."""
        with self._sessions.begin() as session:
            studies = StudyRepository(session)
            interrupted, abandoned = studies.requeue_interrupted()
            self._audit_requeued(session, interrupted, abandoned)
            ready = studies.uids_with_status(StudyStatus.READY)
        if interrupted:
            logger.warning("re-queued %d studies interrupted during triage", len(interrupted))
        for uid in ready:
            self._on_ready(uid)
        return ready

    def run_once(self) -> list[str]:
        """Mark quiet studies READY (and re-queue stale triages); hand each on."""
        with self._sessions.begin() as session:
            studies = StudyRepository(session)
            ready = studies.mark_ready(self._quiet_for, max_age=self._max_age)
            audit = AuditLog(session)
            for uid in ready:
                audit.record(
                    AuditEventType.STUDY_READY, actor="completion-watcher", study_instance_uid=uid
                )
            if self._triage_timeout is not None:
                stale, abandoned = studies.requeue_interrupted(stale_after=self._triage_timeout)
                if stale:
                    logger.warning("re-queued %d studies whose triage timed out", len(stale))
                self._audit_requeued(session, stale, abandoned)
                ready += stale
            # Studies whose failed triage waited out its backoff: handed on once more.
            ready += studies.take_due_retries()
        for uid in ready:
            logger.info("study %s is ready", uid)
            self._on_ready(uid)
        return ready

    @staticmethod
    def _audit_requeued(session: Session, uids: list[str], abandoned: list[AbandonedRun]) -> None:
        """Each abandoned run failed, each re-queued study ready again: both audited."""
        audit = AuditLog(session)
        for run in abandoned:
            audit.record(
                AuditEventType.TRIAGE_FAILED,
                Outcome.FAILURE,
                actor="completion-watcher",
                study_instance_uid=run.study_instance_uid,
                run_id=run.run_id,
                model_name=run.model_name,
                model_version=run.model_version,
                reason=run.reason,
            )
        for uid in uids:
            audit.record(
                AuditEventType.STUDY_READY,
                actor="completion-watcher",
                study_instance_uid=uid,
                reason="triage interrupted: triaged again",
            )
