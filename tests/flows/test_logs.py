"""Logs people and collectors can read, from the real commands.

``serve`` with ``log_format = "json"`` writes one JSON object a line (every line parses,
none carries patient data, libraries only from WARNING up); ``demo`` shows its progress and
the table, and writes the detail to a log file; operator mistakes end in one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from config import Destination, Settings
from config.logs import OUR_PACKAGES
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Study, StudyStatus
from dicom_node.delivery.dimse import send_files
from tests.flows.conftest import node_environment
from tests.peers import free_port, wait_for_port, wait_until
from tests.phi import find_patient_data

REPO = Path(__file__).resolve().parents[2]


def _ours(logger: str) -> bool:
    return logger.split(".")[0] in OUR_PACKAGES


def _triaged(settings: Settings, study_uid: str) -> bool:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            return study is not None and study.status == StudyStatus.TRIAGED
    finally:
        engine.dispose()


@pytest.mark.slow
def test_serve_writes_json_lines_without_patient_data(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(port=port)
    env = node_environment(
        settings, PORT=port, LOG_FORMAT="json", LOG_LEVEL="DEBUG", SCP_PROCESSES=2
    )
    log, out = tmp_path / "serve.log", tmp_path / "serve.out"
    with log.open("wb") as errors, out.open("wb") as output:
        node = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"],
            env=env,
            stdout=output,
            stderr=errors,
            cwd=REPO,
        )
    try:
        wait_for_port(port, timeout=180)
        for _ in range(4):  # probes, taken in turn by the node and its receiver process
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        study = sample_studies[0]  # its header carries the phantom patient's name and ID
        target = Destination(name="node", ae_title=settings.ae_title, host="127.0.0.1", port=port)
        assert all(o.success for o in send_files(sorted(study.glob("*.dcm")), target, "MOD"))
        assert wait_until(lambda: _triaged(settings, study.name), timeout=600)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=120)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records, "serve logged nothing"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert not find_patient_data(json.dumps(record)), record
        if not _ours(record["logger"]):
            assert record["level"] in ("WARNING", "ERROR", "CRITICAL"), record
    assert any(r["level"] == "DEBUG" and _ours(r["logger"]) for r in records)
    assert any(study.name in r["message"] for r in records)  # UIDs whole, on one line
    assert any(r["processName"] == "receiver-1" for r in records)  # receivers log alike
    assert node.returncode == 0


@pytest.mark.slow
def test_demo_shows_progress_and_the_table_and_logs_to_a_file(
    demo_bundle: Path, tmp_path: Path
) -> None:
    settings_env = {
        "FRACTURE_TRIAGE_STORE_DIR": str(tmp_path / "var" / "store"),
        "FRACTURE_TRIAGE_OUTPUT_DIR": str(tmp_path / "var" / "outputs"),
        "FRACTURE_TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'audit.db'}",
        "FRACTURE_TRIAGE_MODEL_BUNDLE_DIR": str(demo_bundle),
        "FRACTURE_TRIAGE_PREFECT_FLOW_HEARTBEAT": "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--samples-dir", str(tmp_path / "samples")],
        env={**os.environ, **settings_env},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Triage results" in result.stdout
    for uid in (p.name for p in (tmp_path / "samples").iterdir()):
        assert uid in result.stdout  # whole, pasteable into `audit --study`
    console = result.stdout + result.stderr
    assert " INFO " not in console and "copy attributes" not in console
    assert len(console.splitlines()) < 60
    log = tmp_path / "var" / "log" / "demo.log"
    lines = log.read_text().splitlines()
    assert any(" INFO " in line and "flows." in line for line in lines)
    assert not any("highdicom" in line and " INFO " in line for line in lines)
    assert not find_patient_data(log.read_text())


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["purge"], "Missing option '--older-than-days'"),
        (["status", "--bogus"], "No such option: --bogus"),
        (["reprocess", "--region", "kneecap"], "unknown regions ['kneecap']; expected body parts"),
        (["reprocess", "--status", "exploded"], "unknown study statuses ['exploded']"),
        (["run-study", "1.2.3.4.5"], "no study 1.2.3.4.5 in the database"),
        (["audit", "--study", "1.2.3.4.5"], "No study 1.2.3.4.5"),
        (["status", "--config", "broken.toml"], "is not valid TOML"),
        (["status", "--config", "absent.toml"], "config file 'absent.toml' does not exist"),
    ],
)
def test_operator_mistakes_end_in_one_line(
    args: list[str], expected: str, database: str, tmp_path: Path
) -> None:
    (tmp_path / "broken.toml").write_text('ae_title = "NODE"\nport = \n')
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env={**os.environ, "FRACTURE_TRIAGE_DATABASE_URL": database},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fracture-triage: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stdout


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "status"],
        env={**os.environ, "FRACTURE_TRIAGE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("fracture-triage: the database cannot be reached: OperationalError")


def test_a_database_at_an_older_migration_is_named(tmp_path: Path) -> None:
    from db.migrate import head_revision
    from flows.node.health import check_database, run_check

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0004")
    result = run_check("database", lambda: check_database(engine))
    engine.dispose()
    assert not result.ok
    assert f"is at revision 0004, the code expects {head_revision()}" in result.detail
    status = subprocess.run(
        [sys.executable, "-m", "flows.cli", "status"],
        env={**os.environ, "FRACTURE_TRIAGE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert status.returncode == 2
    assert status.stderr.strip() == (
        f"fracture-triage: the database is at revision 0004, this version expects "
        f"{head_revision()}: run fracture-triage db upgrade"
    )


@pytest.mark.slow
def test_serve_stops_when_its_http_port_is_taken(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(port=free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", "serve"],
            env=node_environment(settings, PORT=settings.port, HTTP__PORT=http_port),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"fracture-triage: cannot start: cannot serve HTTP on 127.0.0.1:{http_port}: "
        "Address already in use"
    )
    assert "Traceback" not in result.stderr
