"""The node's Prometheus metrics, computed from the database when scraped.

The node, its receiving processes and (server mode) its workers all write one database,
so counting there is right whichever process did the work, and survives restarts:

- counters come from the append-only audit trail, read incrementally (each scrape
  counts the events appended since the last one);
- gauges (studies by status, the ready queue, the outbox) are counted at each scrape;
- the triage latency histogram (a study ready -> its SR delivered) takes each SR
  delivery once, by its id, as it is sent.

Only the connection probes (connections closed before a byte, never audited) are
counted in memory, across the receiving processes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.audit import AuditEventType
from db.models import utcnow
from db.reports import (
    audit_tallies,
    deliveries_by_destination,
    ready_queue,
    sr_latencies,
    studies_by_status,
)
from dicom_node.receive.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
)
from flows.node.bundle_facts import BundleFacts
from flows.node.drift import DriftReport, RateKind, Verdict

logger = logging.getLogger(__name__)

PREFIX = "fracture_triage"
#: Seconds from a study ready to its SR delivered: a CPU node takes seconds to minutes.
LATENCY_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
#: SR deliveries are looked for again this far back: a delivery committed late (another
#: process's clock, a long transaction) is still counted, once.
LATENCY_OVERLAP = dt.timedelta(minutes=10)

_RECEIVED = {
    AuditEventType.INSTANCE_STORED: "stored",
    AuditEventType.INSTANCE_DUPLICATE: "duplicate",
    AuditEventType.INSTANCE_REPLACED: "replaced",
}
#: A refused instance's DIMSE status -> the reason label.
_REFUSAL_REASONS = {
    f"0x{OUT_OF_RESOURCES:04X}": "out_of_resources",
    f"0x{DATASET_DOES_NOT_MATCH_SOP_CLASS:04X}": "dataset_does_not_match_sop_class",
    f"0x{CANNOT_UNDERSTAND:04X}": "cannot_understand",
}
_COUNTED_EVENTS = [
    *_RECEIVED,
    AuditEventType.INSTANCE_REFUSED,
    AuditEventType.OUTPUT_SEND_FAILED,
]


class _AuditCounters:
    """Running totals of the audit events the counters show, read incrementally."""

    def __init__(self) -> None:
        self.after_id = 0
        self.received: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.send_failures: Counter[str] = Counter()

    def update(self, session: Session) -> None:
        tallies, self.after_id = audit_tallies(
            session, [str(kind) for kind in _COUNTED_EVENTS], self.after_id
        )
        for tally in tallies:
            kind = AuditEventType(tally.event_type)
            if kind in _RECEIVED:
                self.received[_RECEIVED[kind]] += tally.count
            elif kind is AuditEventType.INSTANCE_REFUSED:
                reason = _REFUSAL_REASONS.get(tally.status or "", tally.status or "unknown")
                self.refused[reason] += tally.count
            else:
                self.send_failures[tally.actor or "unknown"] += tally.count


class _LatencyHistogram:
    """Per destination: how many SRs were delivered within each bucket, and the sum."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self._seen: dict[int, dt.datetime] = {}
        self._watermark: dt.datetime | None = None

    def update(self, session: Session) -> None:
        since = (
            self._watermark - LATENCY_OVERLAP
            if self._watermark is not None
            else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        )
        for item in sr_latencies(session, since):
            if item.delivery_id in self._seen:
                continue
            self._seen[item.delivery_id] = item.sent_at
            seconds = max(item.seconds, 0.0)
            counts = self.buckets[item.destination]
            first = next(i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound)
            for index in range(first, len(LATENCY_BUCKETS)):
                counts[index] += 1  # cumulative, as Prometheus wants them
            self.sums[item.destination] += seconds
            if self._watermark is None or item.sent_at > self._watermark:
                self._watermark = item.sent_at
        if self._watermark is not None:
            horizon = self._watermark - LATENCY_OVERLAP
            self._seen = {key: at for key, at in self._seen.items() if at >= horizon}

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            f"{PREFIX}_triage_latency_seconds",
            "From a study ready to its SR delivered, per destination (first run after ready).",
            labels=["destination"],
        )
        for destination, counts in sorted(self.buckets.items()):
            family.add_metric(
                [destination],
                buckets=[
                    ("+Inf" if math.isinf(bound) else repr(bound), count)
                    for bound, count in zip(LATENCY_BUCKETS, counts, strict=True)
                ],
                sum_value=self.sums[destination],
            )
        return family


class NodeMetrics(Collector):
    """The collector registered on the node's metrics endpoint."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        probes: Callable[[], int],
        bundle: Callable[[], BundleFacts | None],
        drift: Callable[[], DriftReport | None],
    ) -> None:
        self._sessions = sessions
        self._probes = probes
        self._bundle = bundle
        self._drift = drift
        self._lock = threading.Lock()  # scrapes may overlap; the running totals may not
        self._counters = _AuditCounters()
        self._latency = _LatencyHistogram()

    def collect(self) -> Iterator[Metric]:
        probes = CounterMetricFamily(
            f"{PREFIX}_connection_probes",
            "Connections closed before they sent a byte (health checks, port scans).",
        )
        probes.add_metric([], self._probes())
        yield probes
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "Whether the last scrape read the DB.")
        try:
            with self._lock, self._sessions() as session:
                families = list(self._from_database(session))
            up.add_metric([], 1)
        except SQLAlchemyError as error:
            logger.warning("metrics: database not readable (%s)", type(error).__name__)
            families = []
            up.add_metric([], 0)
        yield up
        yield from families
        yield from self._model_family()
        yield from _drift_families(self._drift())

    def _from_database(self, session: Session) -> Iterator[Metric]:
        self._counters.update(session)
        self._latency.update(session)
        yield _labelled_counter(
            "instances_received",
            "Instances received, by outcome (stored, duplicate, replaced).",
            "outcome",
            self._counters.received,
        )
        yield _labelled_counter(
            "instances_refused",
            "Instances refused, by reason (the DIMSE failure status).",
            "reason",
            self._counters.refused,
        )
        yield _labelled_counter(
            "outbox_send_failures",
            "Failed delivery attempts, by destination (retried or for good).",
            "destination",
            self._counters.send_failures,
        )
        studies = GaugeMetricFamily(f"{PREFIX}_studies", "Studies by status.", labels=["status"])
        for status, count in studies_by_status(session).items():
            studies.add_metric([str(status)], count)
        yield studies
        yield from _queue_families(session)
        deliveries = GaugeMetricFamily(
            f"{PREFIX}_outbox_deliveries",
            "Deliveries by destination and status (pending: the backlog; failed: for good).",
            labels=["destination", "status"],
        )
        for row in deliveries_by_destination(session):
            deliveries.add_metric([row.destination, row.status], row.count)
        yield deliveries
        yield self._latency.family()

    def _model_family(self) -> Iterator[Metric]:
        facts = self._bundle()
        if facts is None:
            return
        info = GaugeMetricFamily(
            f"{PREFIX}_model_info",
            "The configured model bundle (always 1).",
            labels=["name", "version", "trained_on_synthetic_data"],
        )
        info.add_metric(
            [facts.name, facts.version, str(facts.trained_on_synthetic_data).lower()], 1
        )
        yield info


def _labelled_counter(name: str, doc: str, label: str, counts: Counter[str]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _queue_families(session: Session) -> Iterator[Metric]:
    queue = ready_queue(session)
    depth = GaugeMetricFamily(f"{PREFIX}_ready_queue_depth", "Studies ready, not yet triaged.")
    depth.add_metric([], queue.depth)
    yield depth
    age = GaugeMetricFamily(
        f"{PREFIX}_ready_queue_oldest_age_seconds",
        "How long the oldest ready study has waited (0: none waiting).",
    )
    waited = (utcnow() - queue.oldest_ready_at).total_seconds() if queue.oldest_ready_at else 0.0
    age.add_metric([], max(waited, 0.0))
    yield age


def _drift_families(report: DriftReport | None) -> Iterator[Metric]:
    if report is None:
        return
    labels = ["region"]
    rates = {
        RateKind.POSITIVE: GaugeMetricFamily(
            f"{PREFIX}_positive_rate",
            "Share of studies flagged positive over the drift window, per region.",
            labels=labels,
        ),
        RateKind.NOT_ASSESSED: GaugeMetricFamily(
            f"{PREFIX}_not_assessed_rate",
            "Share of views not assessed over the drift window, per stage-1 region.",
            labels=labels,
        ),
    }
    reference = GaugeMetricFamily(
        f"{PREFIX}_positive_rate_reference",
        "The share the bundle's evaluation flagged, per region.",
        labels=labels,
    )
    drifting = GaugeMetricFamily(
        f"{PREFIX}_drift",
        "1 where a rate is beyond the drift limits (enough items in the window), else 0.",
        labels=["rate", "region"],
    )
    for check in report.checks:
        rates[check.kind].add_metric([check.region], check.observed)
        if check.kind is RateKind.POSITIVE and check.reference is not None:
            reference.add_metric([check.region], check.reference)
        drifting.add_metric([str(check.kind), check.region], int(check.verdict is Verdict.DRIFT))
    computable = GaugeMetricFamily(
        f"{PREFIX}_drift_computable",
        "0 when the bundle has no reference for the positive rates (see status).",
    )
    computable.add_metric([], int(report.no_reference is None))
    yield from (*rates.values(), reference, drifting, computable)
