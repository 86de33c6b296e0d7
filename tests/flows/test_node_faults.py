"""A node runs whole or not at all; a failing triage is audited at once, retried, then failed.

Real processes: `fracture-triage serve` started as a subprocess for the start-up checks
(one line on stderr, a non-zero exit, within its timeout), the embedded service for the
failure paths.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from config import Destination, Settings
from db.audit import AuditEventType, AuditLog
from db.models import RunStatus, Study, StudyStatus, TriageRun
from dicom_node.delivery.dimse import send_files
from flows.node.service import TriageService
from flows.runtime import Runtime
from models.runtime.bundle import update_metadata
from tests.flows.conftest import store_study
from tests.peers import free_port, scratch_postgres_database, wait_until

pytestmark = pytest.mark.slow

#: Seconds a refusing node has to say so and exit (imports torch and Prefect first).
START_TIMEOUT = 240


def serve(
    env: dict[str, str], cwd: Path, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_env(tmp_path: Path, bundle: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_TRIAGE_")}
    values: dict[str, object] = {
        "PORT": free_port(),
        "STORE_DIR": tmp_path / "store",
        "OUTPUT_DIR": tmp_path / "outputs",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "MODEL_BUNDLE_DIR": bundle,
        "PREFECT_FLOW_HEARTBEAT": "false",
    }
    values.update({key.upper(): value for key, value in settings.items()})
    env.update({f"FRACTURE_TRIAGE_{key}": str(value) for key, value in values.items()})
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return env


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refusing node prints, after checking it exited non-zero."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_node_without_a_loadable_bundle_refuses_to_start(
    test_bundle: Path, tmp_path: Path
) -> None:
    result = serve(node_env(tmp_path, tmp_path / "no-such-bundle"), tmp_path)
    assert "model bundle" in refusal(result) and "cannot be loaded" in refusal(result)

    broken = tmp_path / "broken-bundle"
    shutil.copytree(test_bundle, broken)
    (broken / "models" / "model.pt").write_bytes(b"not weights")
    assert "cannot be loaded" in refusal(serve(node_env(tmp_path, broken), tmp_path))

    # A bundle whose positive labels meant "abnormality" (MURA's): the node's results say
    # "fracture", so it would claim more than the model learned.
    abnormality = tmp_path / "abnormality-bundle"
    shutil.copytree(test_bundle, abnormality)
    update_metadata(abnormality, label_meaning="abnormality")
    line = refusal(serve(node_env(tmp_path, abnormality), tmp_path))
    assert "'abnormality'" in line and "does not run this bundle" in line


def test_a_taken_port_an_unwritable_store_and_a_missing_database_are_named(
    test_bundle: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refusal(serve(node_env(tmp_path / "a", test_bundle, port=port), tmp_path))
        assert f"port {port}" in line and "taken" in line

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    line = refusal(
        serve(node_env(tmp_path / "b", test_bundle, store_dir=a_file / "store"), tmp_path)
    )
    assert "store_dir" in line and "not writable" in line

    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    line = refusal(serve(node_env(tmp_path / "c", test_bundle, database_url=unreachable), tmp_path))
    assert "database cannot be reached" in line


def test_a_node_on_an_unmigrated_postgresql_database_refuses_to_start(
    test_bundle: Path, tmp_path: Path
) -> None:
    with scratch_postgres_database() as url:
        line = refusal(serve(node_env(tmp_path, test_bundle, database_url=url), tmp_path))
        assert "revision none" in line and "fracture-triage db upgrade" in line


def test_a_node_started_in_a_folder_without_var_triages_a_study(
    test_bundle: Path, sample_studies: list[Path], tmp_path: Path
) -> None:
    """Every path relative (the example config's), nothing under the working folder yet."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FRACTURE_TRIAGE_", "PREFECT_"))
    }
    env.update(
        FRACTURE_TRIAGE_PORT=str(port),
        FRACTURE_TRIAGE_MODEL_BUNDLE_DIR=str(test_bundle),
        FRACTURE_TRIAGE_STUDY_STABLE_SECONDS="1",
        FRACTURE_TRIAGE_PREFECT_FLOW_HEARTBEAT="false",
        HOME=str(tmp_path / "home"),
    )
    log = tmp_path / "node.log"
    with log.open("wb") as handle:
        node = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"], env=env, cwd=workdir,
            stdout=handle, stderr=handle,
        )  # fmt: skip
    try:
        assert wait_until(lambda: _listening(port) or node.poll() is not None, START_TIMEOUT)
        assert node.poll() is None, log.read_text(errors="replace")[-3000:]
        study_dir = sample_studies[0]
        files = sorted(study_dir.glob("*.dcm"))
        target = Destination(name="node", ae_title="FRACTURE_TRIAGE", host="127.0.0.1", port=port)
        assert all(o.success for o in send_files(files, target, "MODALITY"))
        database = workdir / "var" / "fracture_triage.db"
        engine = create_engine(f"sqlite:///{database}")
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        def triaged() -> bool:
            with engine.connect() as connection:
                status = connection.scalar(
                    select(Study.status).where(Study.study_instance_uid == study_uid)
                )
            return status in (StudyStatus.TRIAGED, "triaged")

        assert wait_until(triaged, START_TIMEOUT, step=0.5), log.read_text(errors="replace")[-3000:]
        engine.dispose()
        assert (workdir / "var" / "prefect").is_dir()  # Prefect's home, made where it was missing
    finally:
        node.terminate()
        node.wait(timeout=60)


def test_a_failing_triage_is_audited_at_once_retried_then_failed(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "undecodable"
    broken.mkdir()
    for path in sorted(sample_studies[0].glob("*.dcm")):
        dataset = dcmread(path)
        dataset.PhotometricInterpretation = "PALETTE COLOR"  # no model can read this
        dataset.save_as(broken / path.name, enforce_file_format=True)
    settings = make_settings(
        triage_max_attempts=2, triage_retry_base_seconds=0.5, triage_retry_cap_seconds=0.5
    )
    runtime = Runtime.create(settings)
    with TriageService(runtime) as service:
        uid = store_study(runtime, broken)
        service.submit(uid)
        assert wait_until(lambda: _status(runtime, uid) is StudyStatus.FAILED, 180, step=0.2)
    with runtime.sessions() as session:
        failures = [
            e.detail for e in AuditLog(session).for_study(uid)
            if e.event_type == AuditEventType.TRIAGE_FAILED
        ]  # fmt: skip
        runs = list(session.scalars(select(TriageRun).order_by(TriageRun.id)))
    assert [run.status for run in runs] == [RunStatus.FAILED, RunStatus.FAILED]
    first, second = failures
    assert first["attempt"] == 1 and "retry_at" in first
    assert second["attempt"] == 2 and second["final"] is True
    assert all("no view of the study could be decoded" in f["reason"] for f in failures)


def test_prefect_down_in_server_mode_is_audited_and_retried(
    make_settings: Callable[..., Settings], sample_studies: list[Path]
) -> None:
    """Not the study's fault: audited at each attempt, retried with backoff, never FAILED."""
    settings = make_settings(
        prefect_api_url=f"http://127.0.0.1:{free_port()}/api",
        triage_max_attempts=2,
        triage_retry_base_seconds=0.5,
        triage_retry_cap_seconds=0.5,
    )
    runtime = Runtime.create(settings)

    def failures() -> list[dict]:
        with runtime.sessions() as session:
            return [
                e.detail for e in AuditLog(session).for_study(uid)
                if e.event_type == AuditEventType.TRIAGE_FAILED
            ]  # fmt: skip

    with TriageService(runtime) as service:  # a server that is down does not stop the node
        uid = store_study(runtime, sample_studies[1])
        service.submit(uid)
        assert wait_until(lambda: len(failures()) >= 3, 240, step=0.2)
        assert _status(runtime, uid) is StudyStatus.READY  # waits for Prefect, not stranded
    attempts = failures()
    assert all("no flow run could be created" in f["reason"] for f in attempts)
    assert all("retry_at" in f and "final" not in f for f in attempts)
    assert [f["attempt"] for f in attempts[:3]] == [1, 2, 3]


def _status(runtime: Runtime, uid: str) -> StudyStatus | None:
    with runtime.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        return study.status if study is not None else None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
