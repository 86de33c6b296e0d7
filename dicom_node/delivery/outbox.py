"""The durable outbox: every produced object reaches every destination, exactly once.

Outputs and their deliveries are rows in the DB before any association is
opened (``RunRepository.add_output``). The outbox sends what is due, marks each
delivery sent, failed for good (the peer refuses the SOP class or the data set),
or pending again after an exponential backoff, and audits every attempt. A PACS
that is down for a while gets everything when it is back; the same file, so the
same SOP Instance UID, is sent on every retry.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from config import AnyDestination, DicomWebDestination, Settings
from config.settings import Hl7Destination
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import Delivery, DeliveryStatus, utcnow
from db.repositories import RunRepository
from dicom_node.delivery.dicomweb import stow_files
from dicom_node.delivery.dimse import SendOutcome, send_files
from dicom_node.delivery.mllp import send_mllp_files
from dicom_node.periodic import PeriodicWorker
from dicom_node.tls import client_context

logger = logging.getLogger(__name__)

#: How long a claimed delivery is left to its sender before another may try: longer than
#: any one pass takes (each association has DIMSE and network timeouts).
DELIVERY_LEASE = dt.timedelta(minutes=15)

#: Sends one destination's files; the default is C-STORE or STOW-RS by destination kind.
Sender = Callable[[list[Path], AnyDestination], list[SendOutcome]]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap: base, 2 x base, 4 x base, ... up to ``cap``."""

    base_seconds: float
    cap_seconds: float

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise ValueError(f"backoff needs 0 < base <= cap, got {self!r}")

    def delay(self, attempts: int) -> dt.timedelta:
        seconds = self.base_seconds * 2 ** max(attempts - 1, 0)
        return dt.timedelta(seconds=min(seconds, self.cap_seconds))


@dataclass(frozen=True)
class OutboxPass:
    """What one outbox pass did with the deliveries it found due."""

    sent: int = 0
    failed: int = 0
    retrying: int = 0


@dataclass(frozen=True)
class _Item:
    delivery_id: int
    sop_instance_uid: str
    study_instance_uid: str
    path: Path


class Outbox:
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        sender: Sender | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = session_factory
        self._destinations = {d.name: d for d in settings.destinations}
        self._backoff = Backoff(
            settings.outbox_retry_base_seconds, settings.outbox_retry_cap_seconds
        )
        self._send = sender or self._send_any
        self._lock = threading.Lock()  # one pass at a time in this process

    def _send_any(self, paths: list[Path], destination: AnyDestination) -> list[SendOutcome]:
        if isinstance(destination, Hl7Destination):
            return [
                SendOutcome(path.stem, destination.name, r.success, None, r.error, r.permanent)
                for path, r in zip(
                    paths,
                    send_mllp_files(
                        paths,
                        destination.host,
                        destination.port,
                        timeout=destination.timeout_seconds,
                    ),
                    strict=True,
                )
            ]
        if isinstance(destination, DicomWebDestination):
            return stow_files(paths, destination)
        tls = client_context(self._settings.tls) if destination.tls else None
        return send_files(paths, destination, self._settings.ae_title, tls=tls)

    def send_due(self, run_id: int | None = None) -> OutboxPass:
        """One pass over the due deliveries (only ``run_id``'s when given)."""
        with self._lock:
            plan = self._plan(run_id)
            totals = OutboxPass()
            for name, items in plan.items():
                destination = self._destinations.get(name)
                if destination is None:
                    outcomes = [
                        SendOutcome(
                            i.sop_instance_uid, name, False, None, "unknown destination", True
                        )
                        for i in items
                    ]
                else:
                    outcomes = self._send([i.path for i in items], destination)
                totals = self._record(items, outcomes, name, totals)
            return totals

    def _plan(self, run_id: int | None) -> dict[str, list[_Item]]:
        output_root = self._settings.output_dir
        plan: dict[str, list[_Item]] = {}
        # The claim is committed before anything is sent: every process that sends (the
        # node, a worker, retry-outbox) skips what another one has claimed.
        with self._sessions.begin() as session:
            claimed = RunRepository(session).claim_due_deliveries(DELIVERY_LEASE, run_id=run_id)
            for delivery in claimed:
                output = delivery.output
                plan.setdefault(delivery.destination, []).append(
                    _Item(
                        delivery.id,
                        output.sop_instance_uid,
                        output.run.study.study_instance_uid,
                        output_root / output.path,
                    )
                )
        return plan

    def _record(
        self, items: list[_Item], outcomes: list[SendOutcome], name: str, totals: OutboxPass
    ) -> OutboxPass:
        sent, failed, retrying = totals.sent, totals.failed, totals.retrying
        with self._sessions.begin() as session:
            runs, audit = RunRepository(session), AuditLog(session)
            for item, outcome in zip(items, outcomes, strict=True):
                delivery = session.get_one(Delivery, item.delivery_id)
                context = {
                    "actor": name,
                    "study_instance_uid": item.study_instance_uid,
                    "sop_instance_uid": item.sop_instance_uid,
                }
                if outcome.success:
                    runs.mark_delivery(delivery, DeliveryStatus.SENT)
                    audit.record(AuditEventType.OUTPUT_SENT, attempt=delivery.attempts, **context)
                    sent += 1
                    continue
                if outcome.permanent:
                    runs.mark_delivery(delivery, DeliveryStatus.FAILED, outcome.error)
                    failed += 1
                else:
                    retry_at = utcnow() + self._backoff.delay(delivery.attempts + 1)
                    runs.mark_delivery(delivery, DeliveryStatus.PENDING, outcome.error, retry_at)
                    retrying += 1
                audit.record(
                    AuditEventType.OUTPUT_SEND_FAILED,
                    Outcome.FAILURE,
                    reason=outcome.error,
                    permanent=outcome.permanent,
                    attempt=delivery.attempts,
                    **context,
                )
        if retrying or failed:
            logger.warning(
                "destination %s: %d sent, %d to retry, %d failed for good",
                name,
                sent - totals.sent,
                retrying - totals.retrying,
                failed - totals.failed,
            )
        return OutboxPass(sent, failed, retrying)


class OutboxWorker(PeriodicWorker):
    """Runs :meth:`Outbox.send_due` every ``interval`` s, or at once on :meth:`wake`."""

    def __init__(self, outbox: Outbox, interval: float = 1.0) -> None:
        super().__init__("outbox", interval)
        self._outbox = outbox

    def run_once(self) -> OutboxPass:
        return self._outbox.send_due()
