"""``fracture-triage audit``: verify names the first broken event; --study tells the story."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from db.audit import AuditEventType, AuditLog, Outcome
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from flows.cli.app import app

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns otherwise
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    path = tmp_path / "node.toml"
    path.write_text(f'database_url = "{url}"\n')
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        audit = AuditLog(session)
        audit.record(AuditEventType.ASSOCIATION_ACCEPTED, actor="MODALITY", address="127.0.0.1")
        audit.record(
            AuditEventType.INSTANCE_STORED,
            actor="MODALITY",
            study_instance_uid=STUDY,
            sop_instance_uid=f"{STUDY}.1.1",
        )
        audit.record(AuditEventType.STUDY_READY, actor="watcher", study_instance_uid=STUDY)
        audit.record(
            AuditEventType.TRIAGE_FAILED,
            Outcome.FAILURE,
            actor="triage",
            study_instance_uid=STUDY,
            reason="RuntimeError: boom",
        )
    engine.dispose()
    return path, url


def test_verify_reports_an_intact_chain(config: tuple[Path, str]) -> None:
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config[0])])
    assert result.exit_code == 0, result.output
    assert "Audit chain intact: 4 event(s)" in result.output


def test_verify_names_a_hand_edited_event(config: tuple[Path, str]) -> None:
    path, url = config
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        connection.execute(text("UPDATE audit_events SET outcome = 'success' WHERE id = 4"))
    engine.dispose()
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "Audit chain broken at event 4" in result.output
    assert "edited" in result.output
    assert "3 event(s) before it verified" in result.output


def test_study_story_as_table_and_json(config: tuple[Path, str]) -> None:
    path, _ = config
    result = CliRunner().invoke(app, ["audit", "--study", STUDY, "--config", str(path)])
    assert result.exit_code == 0, result.output
    for expected in ("instance_stored", "study_ready", "triage_failed", "RuntimeError: boom"):
        assert expected in result.output
    assert "association_accepted" not in result.output

    result = CliRunner().invoke(app, ["audit", "--study", STUDY, "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    story = json.loads(result.output)
    assert story["study_instance_uid"] == STUDY
    assert [e["event_type"] for e in story["events"]] == [
        "instance_stored",
        "study_ready",
        "triage_failed",
    ]
    assert story["events"][2]["detail"] == {"reason": "RuntimeError: boom"}
    assert all(len(e["event_hash"]) == 64 for e in story["events"])


def test_unknown_study_and_missing_database(config: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = config
    result = CliRunner().invoke(app, ["audit", "--study", "9.9.9", "--config", str(path)])
    assert result.exit_code == 1
    assert "No study 9.9.9" in result.output
    missing = tmp_path / "missing.toml"
    missing.write_text(f'database_url = "sqlite:///{tmp_path / "nope.db"}"\n')
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(missing)])
    assert result.exit_code == 2
    assert not (tmp_path / "nope.db").exists()
