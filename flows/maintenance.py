"""Admin flows: reprocess studies, retry the outbox, purge old pixel data.

``reprocess`` selects studies (received-date range, statuses, regions, model
version older than a given one), optionally fetches them again from the PACS by
C-FIND + C-MOVE to the node's own AE, and triages each one again with the model
that is configured now. Prefect sees UIDs, dates and counts only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version
from prefect import flow, task
from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Destination
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import (
    Delivery,
    DeliveryStatus,
    Instance,
    OutputObject,
    Study,
    StudyStatus,
    TriageRun,
    utcnow,
)
from db.repositories import RunRepository
from dicom_node.retrieve.query import StudyQuery, find_studies, move_study
from flows.runtime import Runtime, current_runtime
from flows.triage.flow import UNCHANGED, triage_study

logger = logging.getLogger(__name__)

Source = Literal["local", "pacs"]


@dataclass(frozen=True)
class ReprocessCriteria:
    """Which studies to triage again; every criterion that is set must hold."""

    received_from: dt.date | None = None
    received_to: dt.date | None = None
    statuses: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    model_version_older_than: str | None = None

    def __post_init__(self) -> None:
        known = {s.value for s in StudyStatus}
        unknown = [s for s in self.statuses if s not in known]
        if unknown:
            raise ValueError(f"unknown study statuses {unknown}; expected some of {sorted(known)}")
        if self.model_version_older_than is not None:
            Version(self.model_version_older_than)  # raises InvalidVersion naming the value


def select_studies(runtime: Runtime, criteria: ReprocessCriteria) -> list[str]:
    """Study UIDs in the local DB that match ``criteria`` (oldest first)."""
    query = select(Study).order_by(Study.id)
    if criteria.received_from is not None:
        query = query.where(Study.first_received_at >= _start_of(criteria.received_from))
    if criteria.received_to is not None:
        query = query.where(
            Study.first_received_at < _start_of(criteria.received_to + dt.timedelta(days=1))
        )
    if criteria.statuses:
        query = query.where(Study.status.in_([StudyStatus(s) for s in criteria.statuses]))
    selected = []
    with runtime.sessions() as session:
        runs = RunRepository(session)
        for study in session.scalars(query):
            latest = runs.latest_for_study(study.study_instance_uid)
            result = latest.study_result if latest else None
            if criteria.regions and (result is None or result.region not in criteria.regions):
                continue
            if criteria.model_version_older_than is not None and not _older(
                latest.model_version if latest else None, criteria.model_version_older_than
            ):
                continue
            selected.append(study.study_instance_uid)
    return selected


def _older(version: str | None, than: str) -> bool:
    if version is None:
        return True  # never triaged: older than any model
    try:
        return Version(version) < Version(than)
    except InvalidVersion:
        return True


def _start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


@task(name="fetch-from-pacs", retries=2, retry_delay_seconds=[5, 30])
def fetch_from_pacs(
    pacs_name: str, date_from: dt.date | None, date_to: dt.date | None, modality: str | None
) -> list[str]:
    """C-FIND the PACS, C-MOVE each match to our own AE; return the moved study UIDs."""
    runtime = current_runtime()
    settings = runtime.settings
    pacs = _pacs(runtime, pacs_name)
    query = StudyQuery(date_from=date_from, date_to=date_to, modality=modality)
    moved = []
    for match in find_studies(pacs, settings.ae_title, query):
        result = move_study(pacs, settings.ae_title, match.study_instance_uid, settings.ae_title)
        logger.info(
            "moved study %s: %d completed, %d failed",
            match.study_instance_uid,
            result.completed,
            result.failed,
        )
        moved.append(match.study_instance_uid)
    return moved


def _pacs(runtime: Runtime, name: str) -> Destination:
    for destination in runtime.settings.destinations:
        if destination.name == name and isinstance(destination, Destination):
            return destination
    raise ValueError(f"no DIMSE destination named {name!r} to query")


@flow(name="reprocess", persist_result=False)
def reprocess(
    received_from: dt.date | None = None,
    received_to: dt.date | None = None,
    statuses: Sequence[str] = (),
    regions: Sequence[str] = (),
    model_version_older_than: str | None = None,
    source: Source = "local",
    pacs: str | None = None,
    modality: str | None = None,
    requested_by: str = "system",
) -> dict[str, int]:
    """Triage matching studies again with the configured model.

    Studies whose instances this very model has triaged already are left as they
    are (counted as ``unchanged``); a newer model triages them again, and its
    results supersede the old ones (new SR naming its predecessor, and an IOCM
    rejection note withdrawing the old objects at the destinations).

    With ``source="pacs"`` the studies of the date range are first fetched from the
    destination named ``pacs`` by C-FIND + C-MOVE (to this node's own AE), so a
    study whose pixels were purged, or that never reached the node, is triaged too.
    """
    runtime = current_runtime()
    criteria = ReprocessCriteria(
        received_from=None if source == "pacs" else received_from,
        received_to=None if source == "pacs" else received_to,
        statuses=tuple(statuses),
        regions=tuple(regions),
        model_version_older_than=model_version_older_than,
    )
    if source == "pacs":
        if pacs is None:
            raise ValueError("source 'pacs' needs the name of the destination to query")
        candidates = fetch_from_pacs(pacs, received_from, received_to, modality)
        matching = set(select_studies(runtime, criteria))
        study_uids = [uid for uid in candidates if uid in matching]
    else:
        study_uids = select_studies(runtime, criteria)

    with runtime.sessions.begin() as session:
        audit = AuditLog(session)
        details = {"source": source, "model_version_older_than": model_version_older_than}
        audit.record(
            AuditEventType.REPROCESS_REQUESTED,
            actor=requested_by,
            studies=len(study_uids),
            **details,
        )
        # And one per study, so that `audit --study` says who had it triaged again.
        for uid in study_uids:
            audit.record(
                AuditEventType.REPROCESS_REQUESTED,
                actor=requested_by,
                study_instance_uid=uid,
                **details,
            )
    triaged = unchanged = failed = deferred = 0
    priority = runtime.settings.priority
    for index, uid in enumerate(study_uids):
        if not priority.may_reprocess_at(dt.datetime.now().hour):
            # Outside the off-peak window: live studies have the models; the rest waits
            # for the next (scheduled) reprocess run, which selects them again.
            deferred = len(study_uids) - index
            logger.info("outside the reprocess window: %d studies deferred", deferred)
            break
        try:
            summary = triage_study(uid, force=True)
            triaged += summary.status == StudyStatus.TRIAGED.value
            unchanged += summary.status == UNCHANGED
        except Exception:
            logger.exception("reprocessing study %s failed", uid)
            failed += 1
    return {
        "selected": len(study_uids),
        "triaged": triaged,
        "unchanged": unchanged,
        "failed": failed,
        "deferred": deferred,
    }


@flow(name="retry-outbox", persist_result=False)
def retry_outbox() -> dict[str, int]:
    """Send every due delivery now (the node's outbox thread does this continuously)."""
    result = current_runtime().outbox.send_due()
    return {"sent": result.sent, "failed": result.failed, "retrying": result.retrying}


@flow(name="purge-store", persist_result=False)
def purge_store(older_than_days: int, requested_by: str = "system") -> dict[str, int]:
    """Delete pixel data older than ``older_than_days``; keep the DB rows and the audit trail.

    Goes: the received instances' files, and the local copies of our outputs (captures,
    Parametric Maps, SRs, presentation states, ORU messages: they carry patient data
    too) once every delivery of theirs is settled. Stays: instance, run, result, output
    and audit rows, so the audit trail still tells the whole story of a purged study.

    Each study's purge is audited before its files are deleted: a crash in between leaves
    files that the next purge deletes (and audits again), never a deletion without its
    event.
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must not be negative, got {older_than_days}")
    runtime = current_runtime()
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    with runtime.sessions() as session:
        plan = _purge_plan(runtime, session, cutoff)
    removed = freed = studies = 0
    for study_uid, paths in sorted(plan.items()):
        existing = [path for path in paths if path.is_file()]
        if not existing:
            continue
        size = sum(path.stat().st_size for path in existing)
        with runtime.sessions.begin() as session:
            AuditLog(session).record(
                AuditEventType.PURGE,
                actor=requested_by,
                study_instance_uid=study_uid,
                older_than_days=older_than_days,
                files=len(existing),
                bytes=size,
            )
        undeletable = 0
        for path in existing:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                undeletable += 1
        if undeletable:
            logger.error("purge of study %s: %d files not deleted", study_uid, undeletable)
            with runtime.sessions.begin() as session:
                AuditLog(session).record(
                    AuditEventType.PURGE,
                    Outcome.FAILURE,
                    actor=requested_by,
                    study_instance_uid=study_uid,
                    reason=f"{undeletable} files could not be deleted",
                )
        removed += len(existing) - undeletable
        freed += size
        studies += 1
    return {"files": removed, "bytes": freed, "studies": studies}


def _purge_plan(runtime: Runtime, session: Session, cutoff: dt.datetime) -> dict[str, list[Path]]:
    """Study UID -> the files a purge at ``cutoff`` deletes."""
    plan: dict[str, list[Path]] = defaultdict(list)
    instances = session.execute(
        select(Study.study_instance_uid, Instance.path)
        .join(Instance.study)
        .where(Instance.received_at < cutoff)
    )
    for study_uid, path in instances:
        plan[study_uid].append(runtime.store.absolute(path))
    outputs = session.execute(
        select(Study.study_instance_uid, OutputObject.path)
        .join(OutputObject.run)
        .join(TriageRun.study)
        .where(
            OutputObject.created_at < cutoff,
            ~OutputObject.deliveries.any(Delivery.status == DeliveryStatus.PENDING),
        )
    )
    for study_uid, path in outputs:
        plan[study_uid].append(runtime.output_dir / path)
    return plan
