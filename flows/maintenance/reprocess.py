"""The reprocess flow: triage matching studies again with the configured model.

``reprocess`` selects studies (received-date range, statuses, regions, model
version older than a given one), optionally fetches them again from the PACS by
C-FIND + C-MOVE to the node's own AE, and triages each one again with the model
that is configured now. Prefect sees UIDs, dates and counts only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from packaging.version import InvalidVersion, Version
from prefect import flow, task

from config import Destination
from config.domain.anatomy import BODY_PARTS
from db.audit import AuditEventType, AuditLog
from db.models import StudyStatus
from db.repositories import StudyRepository
from dicom_node.retrieve.query import StudyQuery, find_studies, move_study
from flows.runtime import Runtime, current_runtime
from flows.triage.flow import UNCHANGED, triage_study

logger = logging.getLogger(__name__)

Source = Literal["local", "pacs"]


@dataclass(frozen=True)
class ReprocessCriteria:
    """Which studies to triage again; every criterion that is set must hold.

    Unknown statuses, regions or an invalid version raise ``ValueError`` naming the
    value and the valid ones.
    """

    received_from: dt.date | None = None
    received_to: dt.date | None = None
    statuses: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    model_version_older_than: str | None = None

    def __post_init__(self) -> None:
        known = [s.value for s in StudyStatus]
        unknown = [s for s in self.statuses if s not in known]
        if unknown:
            raise ValueError(f"unknown study statuses {unknown}; expected some of {sorted(known)}")
        # A bundle's regions are body parts (MURA's seven for the demo, FracAtlas's four...).
        unknown = [r for r in self.regions if r not in BODY_PARTS]
        if unknown:
            raise ValueError(
                f"unknown regions {unknown}; expected body parts of {sorted(BODY_PARTS)}"
            )
        if self.model_version_older_than is not None:
            Version(self.model_version_older_than)  # raises InvalidVersion naming the value


def select_studies(runtime: Runtime, criteria: ReprocessCriteria) -> list[str]:
    """Study UIDs in the local DB that match ``criteria`` (oldest first)."""
    received_to = criteria.received_to
    with runtime.sessions() as session:
        candidates = StudyRepository(session).with_latest_run(
            received_from=_start_of(criteria.received_from) if criteria.received_from else None,
            received_before=_start_of(received_to + dt.timedelta(days=1)) if received_to else None,
            statuses=[StudyStatus(s) for s in criteria.statuses],
        )
    return [
        study.study_instance_uid
        for study in candidates
        if (not criteria.regions or study.region in criteria.regions)
        and (
            criteria.model_version_older_than is None
            or _older(study.model_version, criteria.model_version_older_than)
        )
    ]


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

    _audit_request(runtime, study_uids, source, model_version_older_than, requested_by)
    return _triage_each(runtime, study_uids)


def _audit_request(
    runtime: Runtime,
    study_uids: list[str],
    source: Source,
    model_version_older_than: str | None,
    requested_by: str,
) -> None:
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


def _triage_each(runtime: Runtime, study_uids: list[str]) -> dict[str, int]:
    """Triage the studies one by one while inside the off-peak window; the counts."""
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
