"""Drift against the bundle's evaluation: the verdict, its audit events, status and metrics.

Results are written as the triage flow writes them (a study, a successful run, its study
and image results) into a real SQLite audit database; the bundle is a metadata file with
the evaluation figures drift reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.orm import Session, sessionmaker

from config import load_settings
from config.settings import DriftSettings
from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import ImageResult, RunStatus, Study, StudyResult, StudyStatus, TriageRun, utcnow
from flows.node.drift import DriftMonitor, RateKind, Verdict, drift_report
from flows.node.metrics import NodeMetrics

REPO = Path(__file__).resolve().parents[2]
LIKELY, NOT_SUSPECTED = "fracture likely", "no fracture suspected"
DRIFT = DriftSettings(window_hours=24, min_studies=10, factor=2.0, max_not_assessed_rate=0.3)


def bundle(tmp_path: Path, with_evaluation: bool = True) -> Path:
    """A bundle whose evaluation flagged 20% of wrist studies at the suspected point."""
    metrics = (
        {"evaluation": {"regions": {"wrist": {"confusion_suspected": _confusion(10, 10, 70, 10)}}}}
        if with_evaluation
        else {}
    )
    path = tmp_path / "bundle"
    (path / "configs").mkdir(parents=True)
    metadata = {"name": "test-model", "version": "1.0", "metrics": metrics}
    (path / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return path


def _confusion(tp: int, fp: int, tn: int, fn: int) -> dict[str, int]:
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    return make_session_factory(engine)


_counter = iter(range(1, 10_000))


def add_studies(
    sessions: sessionmaker[Session],
    count: int,
    level: str | None,
    *,
    region: str | None = "wrist",
    finished: dt.datetime | None = None,
) -> None:
    """``count`` triaged studies of ``region`` at ``level`` (None: not assessed)."""
    finished = finished or utcnow()
    with sessions.begin() as session:
        for _ in range(count):
            uid = f"1.2.826.0.1.3680043.10.99.{next(_counter)}"
            study = Study(study_instance_uid=uid, status=StudyStatus.TRIAGED)
            session.add(study)
            session.flush()
            run = TriageRun(
                study_id=study.id,
                status=RunStatus.SUCCEEDED,
                model_name="test-model",
                model_version="1.0",
                started_at=finished,
                finished_at=finished,
            )
            session.add(run)
            session.flush()
            gate = None if level is not None else "pixels"
            session.add(StudyResult(run_id=run.id, region=region if level else None, level=level))
            session.add(
                ImageResult(
                    run_id=run.id,
                    sop_instance_uid=f"{uid}.1",
                    region=region,
                    level=level,
                    not_assessed_gate=gate,
                )
            )


def drift_events(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        audit = AuditLog(session)
        events = audit.of_type(AuditEventType.DRIFT_DETECTED) + audit.of_type(
            AuditEventType.DRIFT_CLEARED
        )
    return [f"{e.event_type} {e.detail['rate']}" for e in sorted(events, key=lambda e: e.id)]


def test_a_positive_rate_beyond_the_factor_is_drift_audited_once_then_cleared(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    monitor = DriftMonitor(sessions, DRIFT, bundle(tmp_path))
    add_studies(sessions, 5, LIKELY)
    report = monitor.run_once()
    (wrist,) = [c for c in report.checks if c.kind is RateKind.POSITIVE]
    assert wrist.verdict is Verdict.TOO_FEW and wrist.reference == pytest.approx(0.2)

    add_studies(sessions, 7, LIKELY)  # 12 of 12 flagged: five times the evaluation's 20%
    report = monitor.run_once()
    assert [c.key for c in report.drifting] == ["positive_rate:wrist"]
    assert "100% of 12 studies flagged positive" in report.warnings[0]
    monitor.run_once()  # the same drift is not audited again
    assert drift_events(sessions) == ["drift_detected positive_rate:wrist"]

    add_studies(sessions, 40, NOT_SUSPECTED)  # 12 of 52: 23%, within a factor of 2
    assert monitor.run_once().drifting == []
    assert drift_events(sessions) == [
        "drift_detected positive_rate:wrist",
        "drift_cleared positive_rate:wrist",
    ]
    # Studies older than the window no longer count.
    later = utcnow() + dt.timedelta(hours=25)
    with sessions() as session:
        assert drift_report(session, DRIFT, bundle(tmp_path / "b"), now=later).checks == []


def test_not_assessed_views_over_the_ceiling_are_drift_and_show_in_metrics(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    monitor = DriftMonitor(sessions, DRIFT, bundle(tmp_path))
    add_studies(sessions, 6, NOT_SUSPECTED)
    add_studies(sessions, 6, None)  # half the wrist views not assessed
    report = monitor.run_once()
    (check,) = report.drifting
    assert check.kind is RateKind.NOT_ASSESSED and check.observed == pytest.approx(0.5)
    assert drift_events(sessions) == ["drift_detected not_assessed_rate:wrist"]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(sessions, lambda: 0, lambda: None, lambda: report))
    text = generate_latest(registry).decode()
    assert 'fracture_triage_not_assessed_rate{region="wrist"} 0.5' in text
    assert 'fracture_triage_drift{rate="not_assessed_rate",region="wrist"} 1.0' in text
    assert 'fracture_triage_positive_rate_reference{region="wrist"} 0.2' in text
    assert "fracture_triage_drift_computable 1.0" in text


def test_status_warns_of_drift_and_says_when_it_cannot_be_computed(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    add_studies(sessions, 12, LIKELY)
    database = str(sessions.kw["bind"].url)
    for bundle_dir, expected in (
        (bundle(tmp_path), "drift: wrist: 100% of 12 studies flagged positive"),
        (
            bundle(tmp_path / "bare", with_evaluation=False),
            "drift of the positive rate cannot be computed: the bundle's metadata has no "
            "evaluation confusion per region",
        ),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", "status"],
            env={
                **os.environ,
                "FRACTURE_TRIAGE_DATABASE_URL": database,
                "FRACTURE_TRIAGE_MODEL_BUNDLE_DIR": str(bundle_dir),
                "FRACTURE_TRIAGE_DRIFT__MIN_STUDIES": "10",
            },
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout.replace("\n", " "), result.stdout
    assert load_settings(None, drift={"min_studies": 10}).drift.min_studies == 10


def test_every_metric_the_operations_guide_names_is_exposed(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    import re

    from flows.node.bundle_facts import read_bundle_facts

    facts = read_bundle_facts(bundle(tmp_path))
    with sessions() as session:
        report = drift_report(session, DRIFT, bundle(tmp_path / "b"))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(sessions, lambda: 0, lambda: facts, lambda: report))
    exposed = set(re.findall(r"^# TYPE (\w+) ", generate_latest(registry).decode(), re.M))
    exposed |= {name + "_total" for name in exposed}
    guide = (REPO / "docs" / "operations.md").read_text()
    section = guide[guide.index("## Health and metrics") : guide.index("## Logs")]
    named = set(re.findall(r"\b(fracture_triage_[a-z_]+)", section))
    assert named and named <= exposed, named - exposed
