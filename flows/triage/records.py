"""The triage flows' bookkeeping: each step one short transaction in the audit database.

A run's life is claim -> start -> results -> outputs -> finished (or failed, or
skipped), each step with its audit event in the same transaction, so the database
always says where every study is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect.runtime import flow_run
from sqlalchemy.orm import Session, sessionmaker

from config.domain.findings import AlgorithmIdentity, StudyFinding
from config.domain.vocabulary import OutputKind
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import RunStatus, StudyStatus
from db.repositories import (
    FailedAttempt,
    ImageResultRow,
    RunRepository,
    StudyRepository,
    WrittenOutput,
)
from dicom_node.outputs.sr import device_observer_uid
from flows.triage.payloads import SourceView

logger = logging.getLogger(__name__)

Sessions = sessionmaker[Session]


def input_key(algorithm: AlgorithmIdentity, sources: Sequence[SourceView]) -> str:
    """What makes a result: the model's identity and the exact source instances.

    SHA-256 over the model's name, version and device UID and each source's SOP
    Instance UID with the SHA-256 of its stored file, so a study re-sent unchanged
    maps to the same key while a changed instance or another model does not.
    """
    digest = hashlib.sha256()
    for part in (algorithm.name, algorithm.version, device_observer_uid(algorithm)):
        digest.update(part.encode() + b"\0")
    for uid, sha256 in sorted((s.sop_instance_uid, s.sha256) for s in sources):
        digest.update(f"{uid}:{sha256}".encode() + b"\0")
    return digest.hexdigest()


def claim(sessions: Sessions, study_instance_uid: str, force: bool) -> bool:
    """Take a READY study for triage (any study not being triaged, with ``force``)."""
    with sessions.begin() as session:
        studies = StudyRepository(session)
        if studies.claim_for_triage(study_instance_uid):
            return True
        return force and studies.claim_forced(study_instance_uid)


def claim_ready(sessions: Sessions, among: Sequence[str] | None, limit: int) -> list[str]:
    with sessions.begin() as session:
        return StudyRepository(session).claim_ready(limit, among=among)


def triageable_views(
    sessions: Sessions, study_instance_uid: str, absolute: Callable[[str], Path]
) -> tuple[SourceView, ...]:
    """The study's CR/DX instances, never our own outputs coming back from the PACS."""
    with sessions() as session:
        runs = RunRepository(session)
        return tuple(
            SourceView(
                study_instance_uid=study_instance_uid,
                sop_instance_uid=instance.sop_instance_uid,
                sha256=instance.sha256,
                path=str(absolute(instance.path)),
            )
            for instance in StudyRepository(session).instances(
                study_instance_uid, triageable_only=True
            )
            if not runs.is_our_output(instance.sop_instance_uid)
        )


def instance_paths(sessions: Sessions, study_instance_uid: str) -> list[str]:
    """Every stored instance of the study (relative paths), ours coming back included."""
    with sessions() as session:
        return [i.path for i in StudyRepository(session).instances(study_instance_uid)]


def calling_ae_title(sessions: Sessions, study_instance_uid: str) -> str | None:
    """The calling AE title that sent the study's first instance (output routes use it)."""
    with sessions() as session:
        instances = StudyRepository(session).instances(study_instance_uid)
        return instances[0].calling_ae_title if instances else None


def start_run(
    sessions: Sessions, study_instance_uid: str, algorithm: AlgorithmIdentity, key: str
) -> int:
    flow_run_id = flow_run.get_id()
    with sessions.begin() as session:
        run = RunRepository(session).start(
            study_instance_uid,
            model_name=algorithm.name,
            model_version=algorithm.version,
            input_key=key,
            flow_run_id=str(flow_run_id) if flow_run_id else None,
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_STARTED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run.id,
            model_name=algorithm.name,
            model_version=algorithm.version,
        )
        return run.id


def earlier_identical_run(sessions: Sessions, key: str) -> int | None:
    with sessions() as session:
        run = RunRepository(session).succeeded_with_input_key(key)
        return run.id if run is not None else None


def finish_unchanged(
    sessions: Sessions, study_instance_uid: str, earlier_run_id: int, algorithm: AlgorithmIdentity
) -> None:
    logger.info(
        "study %s: run %d already triaged these instances with %s %s; nothing to do",
        study_instance_uid,
        earlier_run_id,
        algorithm.name,
        algorithm.version,
    )
    _skip(
        sessions,
        study_instance_uid,
        StudyStatus.TRIAGED,
        run_id=earlier_run_id,
        model_name=algorithm.name,
        model_version=algorithm.version,
        reason="unchanged: these instances were triaged by this model already",
    )


def record_results(sessions: Sessions, run_id: int, finding: StudyFinding) -> None:
    with sessions.begin() as session:
        runs = RunRepository(session)
        runs.record_results(
            runs.get(run_id),
            images=[ImageResultRow.of(image) for image in finding.images],
            finding=finding,
        )


def record_outputs(
    sessions: Sessions,
    study_instance_uid: str,
    run_id: int,
    outputs: Sequence[WrittenOutput],
    maps_not_made: Sequence[tuple[str, str]] = (),
    repaired_attributes: Sequence[str] = (),
) -> None:
    """Record the run's outputs and queue their deliveries; audit each, each map refused,
    and the source attributes the outputs carry empty because their values were malformed
    (keywords only, never the values)."""
    with sessions.begin() as session:
        runs, audit = RunRepository(session), AuditLog(session)
        run = runs.get(run_id)
        for output in outputs:
            runs.add_output(run, output)
            audit.record(
                AuditEventType.OUTPUT_CREATED,
                actor="triage",
                study_instance_uid=study_instance_uid,
                sop_instance_uid=output.sop_instance_uid,
                kind=str(output.kind),
            )
        for sop_instance_uid, reason in maps_not_made:
            audit.record(
                AuditEventType.OUTPUT_CREATED,
                Outcome.FAILURE,
                actor="triage",
                study_instance_uid=study_instance_uid,
                sop_instance_uid=sop_instance_uid,
                kind=str(OutputKind.PARAMETRIC_MAP),
                reason=reason,
            )
        if repaired_attributes:
            audit.record(
                AuditEventType.HEADER_REPAIRED,
                actor="triage",
                study_instance_uid=study_instance_uid,
                run_id=run_id,
                attributes=sorted(repaired_attributes),
            )


def finish_run(
    sessions: Sessions,
    study_instance_uid: str,
    run_id: int,
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    with sessions.begin() as session:
        runs = RunRepository(session)
        runs.finish(runs.get(run_id), RunStatus.SUCCEEDED)
        # A study reopened by a late instance stays RECEIVING and is triaged again.
        studies = StudyRepository(session)
        studies.set_status(study_instance_uid, StudyStatus.TRIAGED, only_from=StudyStatus.TRIAGING)
        studies.succeeded(study_instance_uid)
        detail: dict[str, str | None] = {
            "region": finding.region,
            "level": finding.level.value if finding.level else None,
        }
        if finding.not_assessed is not None:
            detail["not_assessed"] = str(finding.not_assessed.gate)
            detail["reason"] = finding.not_assessed.reason
        AuditLog(session).record(
            AuditEventType.TRIAGE_FINISHED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run_id,
            model_name=algorithm.name,
            model_version=algorithm.version,
            **detail,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How often a study whose triage fails is tried (None: until it works), and how long
    it waits in between."""

    max_attempts: int | None
    delay: Callable[[int], dt.timedelta]


def fail_run(
    sessions: Sessions, study_instance_uid: str, run_id: int, reason: str, policy: RetryPolicy
) -> None:
    """The run failed: recorded and audited at once; the study tried again later, or FAILED.

    ``reason`` must hold no patient data (flows.triage.batch scrubs it).
    """
    logger.error("triage of study %s failed: %s", study_instance_uid, reason.split(":")[0])
    with sessions.begin() as session:
        runs = RunRepository(session)
        run = runs.get(run_id)
        runs.finish(run, RunStatus.FAILED, reason)
        attempt = StudyRepository(session).fail_attempt(
            study_instance_uid, max_attempts=policy.max_attempts, delay=policy.delay
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_FAILED,
            Outcome.FAILURE,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run_id,
            model_name=run.model_name,
            model_version=run.model_version,
            reason=reason,
            **_attempt_detail(attempt),
        )


def fail_unclaimed(
    sessions: Sessions, study_uids: Sequence[str], reason: str, policy: RetryPolicy
) -> None:
    """Triage could not even start (orchestration down, no flow run created): each READY
    study is audited, waits its backoff and is handed on again."""
    with sessions.begin() as session:
        studies, audit = StudyRepository(session), AuditLog(session)
        for uid in study_uids:
            attempt = studies.fail_attempt(
                uid, max_attempts=policy.max_attempts, delay=policy.delay
            )
            audit.record(
                AuditEventType.TRIAGE_FAILED,
                Outcome.FAILURE,
                actor="triage",
                study_instance_uid=uid,
                reason=reason,
                **_attempt_detail(attempt),
            )


def _attempt_detail(attempt: FailedAttempt | None) -> dict[str, object]:
    if attempt is None:  # a new view reopened the study meanwhile
        return {"retry": "with the study's new views"}
    if attempt.retry_at is None:
        return {"attempt": attempt.attempts, "final": True}
    return {"attempt": attempt.attempts, "retry_at": attempt.retry_at.isoformat()}


def finish_without_run(sessions: Sessions, study_instance_uid: str, reason: str) -> None:
    _skip(sessions, study_instance_uid, StudyStatus.NOT_TRIAGED, reason=reason)


def _skip(
    sessions: Sessions, study_instance_uid: str, status: StudyStatus, **detail: object
) -> None:
    """The study needs no run (nothing to read, or unchanged): its status, and why, audited."""
    with sessions.begin() as session:
        StudyRepository(session).set_status(
            study_instance_uid, status, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_SKIPPED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            **detail,
        )


def previous_report_path(sessions: Sessions, study_instance_uid: str, run_id: int) -> str | None:
    """The SR of the study's previous successful run, which the new SR supersedes."""
    with sessions() as session:
        previous = RunRepository(session).previous_sr_output(study_instance_uid, run_id)
        return previous.path if previous is not None else None


def superseded_outputs(
    sessions: Sessions, study_instance_uid: str, run_id: int
) -> list[tuple[str, str]]:
    """(SOP Instance UID, path) of the previous run's objects a rejection note withdraws."""
    with sessions() as session:
        return [
            (o.sop_instance_uid, o.path)
            for o in RunRepository(session).previous_outputs(study_instance_uid, run_id)
            if o.kind.is_withdrawable
        ]
