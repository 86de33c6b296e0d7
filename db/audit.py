"""The audit trail: one vocabulary of events, appended through :class:`AuditLog`."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEvent, utcnow


class AuditEventType(enum.StrEnum):
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
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
    OUTPUT_SENT = "output_sent"
    OUTPUT_SEND_FAILED = "output_send_failed"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class AuditLog:
    """Appends audit events in the caller's session (the caller commits)."""

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
        event = AuditEvent(
            occurred_at=utcnow(),
            event_type=str(event_type),
            outcome=str(outcome),
            actor=actor,
            study_instance_uid=study_instance_uid,
            sop_instance_uid=sop_instance_uid,
            detail=detail,
        )
        self._session.add(event)
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
