"""Drift: does what the node sees still look like what the bundle was evaluated on?

Per region, the share of triaged studies flagged positive (fracture suspected or
likely) over the last ``drift.window_hours`` is compared with the share the bundle's own
evaluation flagged at the same operating point: ``(tp + fp) / studies`` of its
``confusion_suspected``, in the metadata's ``metrics.evaluation.regions``. That share
carries the evaluation data's prevalence and the model's behaviour on it together, so a
stable site with the same case mix sees a ratio near 1; the prevalence alone would not
do (at a screening point many negatives are flagged too). A ratio above
``drift.factor`` or below its inverse is drift. A bundle without those figures gets no
positive-rate verdict, and ``status`` says why.

The share of views not assessed (a gate stopped them) has no reference in a bundle:
above ``drift.max_not_assessed_rate`` is drift. A region with fewer than
``drift.min_studies`` items in the window gets no verdict.

A change of verdict is audited (``drift_detected`` / ``drift_cleared``), once: the last
such event of each rate is read back from the audit trail, so a restarted node does not
audit the same drift again.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from config.settings import DriftSettings
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import utcnow
from db.reports import RegionRate, latest_audit_of_types, not_assessed_rates, positive_rates
from dicom_node.periodic import PeriodicWorker
from flows.node.bundle_facts import BundleUnreadableError, read_bundle_facts

logger = logging.getLogger(__name__)


class RateKind(enum.StrEnum):
    POSITIVE = "positive_rate"
    NOT_ASSESSED = "not_assessed_rate"


class Verdict(enum.StrEnum):
    OK = "ok"
    DRIFT = "drift"
    TOO_FEW = "too few studies"
    NO_REFERENCE = "no reference"


class NoReferenceError(ValueError):
    """The bundle gives no reference rate; the message says what is missing."""


def bundle_reference(bundle_dir: Path) -> dict[str, float]:
    """Region -> reference positive rate from the bundle, or NoReferenceError saying why."""
    try:
        rates = read_bundle_facts(bundle_dir).evaluated_positive_rates
    except BundleUnreadableError as error:
        raise NoReferenceError(str(error)) from None
    if not rates:
        raise NoReferenceError(
            "the bundle's metadata has no evaluation confusion per region "
            "(metrics.evaluation.regions.<region>.confusion_suspected)"
        )
    return rates


@dataclass(frozen=True)
class RateCheck:
    """One rate of one region over the window, and the verdict on it."""

    kind: RateKind
    region: str
    total: int
    observed: float
    #: The reference rate (positive) or the ceiling (not assessed).
    reference: float | None
    verdict: Verdict

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.region}"

    def describe(self) -> str:
        if self.kind is RateKind.POSITIVE:
            return (
                f"{self.region}: {self.observed:.0%} of {self.total} studies flagged positive, "
                f"the bundle's evaluation flagged {self.reference:.0%}"
            )
        return (
            f"{self.region}: {self.observed:.0%} of {self.total} views not assessed, "
            f"above the {self.reference:.0%} allowed"
        )


@dataclass(frozen=True)
class DriftReport:
    window_hours: float
    checks: list[RateCheck]
    #: Why the positive rates have no verdict (no reference in the bundle), if so.
    no_reference: str | None = None

    @property
    def drifting(self) -> list[RateCheck]:
        return [check for check in self.checks if check.verdict is Verdict.DRIFT]

    @property
    def warnings(self) -> list[str]:
        lines = [f"drift: {check.describe()}" for check in self.drifting]
        if self.no_reference:
            lines.append(f"drift of the positive rate cannot be computed: {self.no_reference}")
        return lines


def _positive_check(
    rate: RegionRate, reference: dict[str, float], drift: DriftSettings
) -> RateCheck:
    expected = reference.get(rate.region)
    if expected is None or expected == 0:
        verdict = Verdict.NO_REFERENCE
    elif rate.total < drift.min_studies:
        verdict = Verdict.TOO_FEW
    else:
        ratio = rate.rate / expected
        outside = ratio > drift.factor or ratio < 1 / drift.factor
        verdict = Verdict.DRIFT if outside else Verdict.OK
    return RateCheck(RateKind.POSITIVE, rate.region, rate.total, rate.rate, expected, verdict)


def _not_assessed_check(rate: RegionRate, drift: DriftSettings) -> RateCheck:
    if rate.total < drift.min_studies:
        verdict = Verdict.TOO_FEW
    else:
        verdict = Verdict.DRIFT if rate.rate > drift.max_not_assessed_rate else Verdict.OK
    ceiling = drift.max_not_assessed_rate
    return RateCheck(RateKind.NOT_ASSESSED, rate.region, rate.total, rate.rate, ceiling, verdict)


def drift_report(
    session: Session, drift: DriftSettings, bundle_dir: Path, now: dt.datetime | None = None
) -> DriftReport:
    """The rates of the window ending ``now``, each with its verdict."""
    since = (now or utcnow()) - dt.timedelta(hours=drift.window_hours)
    checks = [_not_assessed_check(rate, drift) for rate in not_assessed_rates(session, since)]
    try:
        reference = bundle_reference(bundle_dir)
    except NoReferenceError as missing:
        return DriftReport(drift.window_hours, checks, no_reference=str(missing))
    positives = [_positive_check(rate, reference, drift) for rate in positive_rates(session, since)]
    return DriftReport(drift.window_hours, positives + checks)


def audit_changes(session: Session, report: DriftReport) -> list[RateCheck]:
    """Audit each rate whose verdict changed since its last drift event; those audited."""
    kinds = (AuditEventType.DRIFT_DETECTED, AuditEventType.DRIFT_CLEARED)
    last: dict[str, str] = {}
    for event in latest_audit_of_types(session, [str(kind) for kind in kinds]):
        last[str((event.detail or {}).get("rate"))] = event.event_type
    changed = []
    audit = AuditLog(session)
    for check in report.checks:
        was_drifting = last.get(check.key) == AuditEventType.DRIFT_DETECTED
        if check.verdict is Verdict.DRIFT and not was_drifting:
            kind, outcome = AuditEventType.DRIFT_DETECTED, Outcome.FAILURE
        elif check.verdict is Verdict.OK and was_drifting:
            kind, outcome = AuditEventType.DRIFT_CLEARED, Outcome.SUCCESS
        else:
            continue
        audit.record(
            kind,
            outcome,
            actor="drift-check",
            rate=check.key,
            observed=round(check.observed, 4),
            reference=round(check.reference, 4) if check.reference is not None else None,
            items=check.total,
            window_hours=report.window_hours,
            reason=check.describe(),
        )
        changed.append(check)
    return changed


class DriftMonitor(PeriodicWorker):
    """Checks drift every ``drift.check_seconds`` in a thread; the last report is kept for
    the metrics endpoint."""

    def __init__(
        self, sessions: sessionmaker[Session], drift: DriftSettings, bundle_dir: Path
    ) -> None:
        super().__init__("drift-check", drift.check_seconds, stop_timeout=30.0)
        self._sessions = sessions
        self._drift = drift
        self._bundle_dir = bundle_dir
        self.last_report: DriftReport | None = None

    def run_once(self) -> DriftReport:
        with self._sessions.begin() as session:
            report = drift_report(session, self._drift, self._bundle_dir)
            for check in audit_changes(session, report):
                log = logger.warning if check.verdict is Verdict.DRIFT else logger.info
                log("drift %s: %s", check.verdict, check.describe())
        self.last_report = report
        return report
