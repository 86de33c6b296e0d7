"""The triage flows: one study (``triage-study``) or every ready study (``triage-batch``).

Both claim their studies in the database first, so no study is ever triaged twice at
once, then hand them to :func:`flows.triage.batch.triage_claimed`, which runs the
tasks of :mod:`flows.triage.tasks`.
"""

from __future__ import annotations

import logging

from prefect import flow

from flows.runtime import current_runtime
from flows.triage import records
from flows.triage.batch import triage_claimed
from flows.triage.errors import TriageError
from flows.triage.payloads import TriageStatus, TriageSummary

logger = logging.getLogger(__name__)

#: Status of a triage that found the same instances already triaged by the same model.
UNCHANGED = TriageStatus.UNCHANGED


@flow(name="triage-study", log_prints=False, persist_result=False)
def triage_study(study_instance_uid: str, force: bool = False) -> TriageSummary:
    """Triage one study: two-stage model, outputs, sent to every destination.

    Parameters
    ----------
    study_instance_uid:
        The study to triage (its instances are in the store and the DB).
    force:
        Triage even when the study is not READY (a re-run from the CLI).

    Raises
    ------
    Exception
        Whatever made the triage fail, after the run is recorded as failed.
    """
    runtime = current_runtime()
    if not records.claim(runtime.sessions, study_instance_uid, force):
        logger.info("study %s is not ready (or already taken); skipped", study_instance_uid)
        return TriageSummary(study_instance_uid, TriageStatus.SKIPPED)
    (outcome,) = triage_claimed(runtime, [study_instance_uid])
    if isinstance(outcome, TriageError):
        raise outcome  # its message names the step and the error type only
    return outcome


@flow(name="triage-batch", log_prints=False, persist_result=False)
def triage_batch(
    study_instance_uids: list[str] | None = None, max_studies: int | None = None
) -> list[TriageSummary]:
    """Triage several studies in one run: their views go through the models together.

    One flow run and one set of model tasks for the batch: Prefect's per-run and
    per-task overhead, and the model's per-call overhead, are shared by every
    study, and a GPU gets full batches. Each study still gets its own triage run,
    results, outputs and audit events; one study failing does not fail the others.

    Parameters
    ----------
    study_instance_uids:
        Studies to triage (each only if READY); ``None``: the READY studies, urgent
        ones first, then oldest first.
    max_studies:
        At most this many studies (default: the ``batch_max_studies`` setting).
    """
    runtime = current_runtime()
    limit = max_studies or runtime.settings.batch_max_studies
    claimed = records.claim_ready(runtime.sessions, study_instance_uids, limit)
    if not claimed:
        return []
    return [
        outcome if isinstance(outcome, TriageSummary) else TriageSummary(uid, TriageStatus.FAILED)
        for uid, outcome in zip(claimed, triage_claimed(runtime, claimed), strict=True)
    ]
