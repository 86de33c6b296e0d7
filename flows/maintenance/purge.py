"""The purge flow: delete old pixel data, keep the rows and the audit trail."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from db.audit import AuditEventType, AuditLog, Outcome
from db.models import utcnow
from db.repositories import FileArea, StudyRepository
from flows.runtime import Runtime, current_runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgePlan:
    """Study UID -> the files a purge would delete now (those that still exist)."""

    files: dict[str, list[Path]]

    @property
    def summary(self) -> dict[str, int]:
        """What ``purge --dry-run`` prints: files, bytes and studies that would go."""
        sizes = [_size(path) for paths in self.files.values() for path in paths]
        return {"files": len(sizes), "bytes": sum(sizes), "studies": len(self.files)}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted meanwhile
        return 0


def purge_plan(runtime: Runtime, older_than_days: int) -> PurgePlan:
    """The files a purge of pixel data older than ``older_than_days`` deletes."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must not be negative, got {older_than_days}")
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    with runtime.sessions() as session:
        found = StudyRepository(session).files_older_than(cutoff)
    plan: dict[str, list[Path]] = defaultdict(list)
    for item in found:
        if item.area is FileArea.STORE:
            path = runtime.store.absolute(item.path)  # never outside the store
        else:
            path = runtime.output_dir / item.path
        if path.is_file():
            plan[item.study_instance_uid].append(path)
    return PurgePlan(dict(plan))


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
    runtime = current_runtime()
    plan = purge_plan(runtime, older_than_days)
    removed = freed = studies = 0
    for study_uid, existing in sorted(plan.files.items()):
        size = sum(_size(path) for path in existing)
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
