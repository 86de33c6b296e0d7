"""Server mode: Orthanc -> node -> Prefect server -> worker (flow run) -> Orthanc."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import Destination, Settings, load_settings
from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Instance, RunStatus, Study, StudyStatus, TriageRun
from db.repositories import RUN_WORKER_LOST, StudyRepository
from dicom_node.delivery.dimse import send_files
from dicom_node.uids import derived_uid
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.peers import (
    Orthanc,
    free_port,
    require,
    run_orthanc,
    scratch_postgres_database,
    wait_for_port,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def http_json(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    log: Path | None = None,
    step: float = 1.0,
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(step)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


@contextmanager
def prefect_server(tmp_path: Path) -> Iterator[str]:
    prefect = Path(sys.executable).with_name("prefect")
    require(prefect.is_file(), "the prefect CLI is not installed in this environment")
    port = free_port()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-server"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "prefect-server.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: http_json(f"{url}/health"), 180, "the Prefect server", log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@dataclass
class Worker:
    """A ``fracture-triage worker`` process (its own session: killpg takes its flow runs too)."""

    process: subprocess.Popen[bytes]
    log: Path
    health_url: str  # Prefect's runner web server: docker-compose's health check

    def kill(self) -> None:
        """SIGKILL, as a crashed box or an OOM killer would: no cleanup runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


def _worker_env(settings: Settings, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("STORE_DIR", "OUTPUT_DIR", "DATABASE_URL", "MODEL_BUNDLE_DIR", "PREFECT_API_URL"):
        env[f"FRACTURE_TRIAGE_{key}"] = str(getattr(settings, key.lower()))
    env["FRACTURE_TRIAGE_DESTINATIONS"] = json.dumps(
        [d.model_dump(mode="json") for d in settings.destinations]
    )
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = str(settings.prefect_api_url)
    return env


@contextmanager
def worker(settings: Settings, home: Path) -> Iterator[Worker]:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "worker.log"
    health_port = free_port()
    env = _worker_env(settings, home) | {
        "PREFECT_RUNNER_SERVER_ENABLE": "true",
        "PREFECT_RUNNER_SERVER_HOST": "127.0.0.1",
        "PREFECT_RUNNER_SERVER_PORT": str(health_port),
    }
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Worker(process, log, f"http://127.0.0.1:{health_port}/health")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def deployments_registered(api_url: str, log: Path) -> None:
    wait_for(
        lambda: http_json(f"{api_url}/deployments/name/triage-batch/ready"),
        240,
        "the worker to register its deployments",
        log,
    )


def ai_series(orthanc: Orthanc, study_uid: str, modality: str) -> list[dict]:
    return [
        s
        for s in orthanc.series_of_study(study_uid)
        if s["MainDicomTags"].get("Modality") == modality
    ]


def batch_runs(api_url: str) -> int:
    """Flow runs of the triage-batch deployment, in any state."""
    deployment = http_json(f"{api_url}/deployments/name/triage-batch/ready")
    assert isinstance(deployment, dict)
    count = http_json(
        f"{api_url}/flow_runs/count", {"deployments": {"id": {"any_": [deployment["id"]]}}}
    )
    assert isinstance(count, int)
    return count


def all_runs_finished(runtime: Runtime) -> bool:
    """The SR reaches the PACS before the other outputs: a run ends after the last one."""
    runs = runs_of(runtime)
    return bool(runs) and all(status is not RunStatus.RUNNING for _, status, _, _ in runs)


def study_status(runtime: Runtime, study_uid: str) -> StudyStatus | None:
    with runtime.sessions() as session:
        study = StudyRepository(session).get(study_uid)
        return None if study is None else study.status


def handoff_failures(runtime: Runtime, study_uid: str) -> list[dict]:
    """The audited attempts to hand the study to Prefect that failed (it waits, retried)."""
    with runtime.sessions() as session:
        return [
            event.detail
            for event in AuditLog(session).for_study(study_uid)
            if event.event_type == AuditEventType.TRIAGE_FAILED
            and "no flow run could be created" in event.detail.get("reason", "")
        ]


def runs_of(runtime: Runtime) -> list[tuple[str, RunStatus, str | None, str | None]]:
    with runtime.sessions() as session:
        return [
            (r.model_version, r.status, r.error, r.flow_run_id)
            for r in session.scalars(select(TriageRun).order_by(TriageRun.id))
        ]


def test_study_runs_through_prefect_server_and_a_worker_then_a_scheduled_reprocess(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    upgraded_bundle: Path,
) -> None:
    node_port = free_port()
    with (
        prefect_server(tmp_path) as api_url,
        run_orthanc(
            tmp_path / "orthanc", modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)}
        ) as orthanc,
    ):
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )
        settings = make_settings(
            port=node_port,
            destinations=(pacs,),
            prefect_api_url=api_url,
            triage_retry_base_seconds=2.0,
            triage_retry_cap_seconds=5.0,
        )
        files = sorted(sample_studies[0].glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        header = dcmread(files[0], stop_before_pixels=True)
        study_uid = str(header.StudyInstanceUID)

        runtime = Runtime.create(settings)
        # The node starts before any worker has registered the deployments (as in
        # docker-compose, where the worker may still be training its bundle): the study
        # becomes ready, its flow run cannot be created yet, and it must not be stranded.
        with TriageService(runtime):
            study_id = orthanc.study_id(study_uid)
            orthanc.request(
                "POST",
                "/modalities/triage/store",
                {"Resources": [study_id], "Synchronous": True},
            )
            wait_for(
                lambda: handoff_failures(runtime, study_uid),
                120,
                "the audited failure to create the flow run (no deployment yet)",
            )
            assert study_status(runtime, study_uid) == StudyStatus.READY and not runs_of(runtime)
            with worker(settings, tmp_path / "worker") as first:
                deployments_registered(api_url, first.log)
                wait_for(
                    lambda: http_json(first.health_url) == {"message": "OK"},
                    60,
                    "the worker's health check",
                    first.log,
                )
                wait_for(
                    lambda: ai_series(orthanc, study_uid, "SR") and all_runs_finished(runtime),
                    400,
                    "the SR in Orthanc and the run finished",
                    first.log,
                )
                # The worker reports the flow run's final state after the flow returns (our
                # run row is finished first): wait for it before the worker is stopped.
                wait_for(
                    lambda: prefect_state(api_url, runtime) == "COMPLETED",
                    120,
                    "the flow run COMPLETED in Prefect",
                    first.log,
                )

        ((version, status, _, flow_run_id),) = runs_of(runtime)
        assert (version, status) == ("0.1.0", RunStatus.SUCCEEDED)
        assert flow_run_id  # executed as a Prefect flow run by the worker
        flow_run = http_json(f"{api_url}/flow_runs/{flow_run_id}")
        assert isinstance(flow_run, dict)
        assert flow_run["state"]["type"] == "COMPLETED"
        assert study_uid not in json.dumps(flow_run["name"])
        first_ai = {
            orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for s in orthanc.series_of_study(study_uid)
            if s["MainDicomTags"].get("SeriesDescription", "").startswith("AI")
            for i in s["Instances"]
        }

        # The site upgrades its model: workers restart with the new bundle, and an
        # admin schedules a reprocess of the study date, fetched from the PACS by
        # C-FIND + C-MOVE, a few seconds from now (in production: the off-peak night).
        upgraded = settings.model_copy(update={"model_bundle_dir": upgraded_bundle})
        with worker(upgraded, tmp_path / "worker-upgraded") as second:
            deployments_registered(api_url, second.log)
            start_at = dt.datetime.now() + dt.timedelta(seconds=5)
            day = dt.datetime.strptime(str(header.StudyDate), "%Y%m%d").date().isoformat()
            with TriageService(Runtime.create(upgraded)):  # the node receives the C-MOVE
                cli = subprocess.run(
                    [
                        str(Path(sys.executable).with_name("fracture-triage")),
                        "reprocess",
                        "--source", "pacs", "--pacs", "pacs",
                        "--from", day, "--to", day,
                        "--model-older-than", "0.2.0",
                        "--at", start_at.isoformat(timespec="seconds"),
                        "--json",
                    ],
                    env=_worker_env(upgraded, tmp_path / "admin"),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )  # fmt: skip
                assert cli.returncode == 0, cli.stdout + cli.stderr
                scheduled = json.loads(cli.stdout.strip().splitlines()[-1])
                assert scheduled["state"] == "Scheduled"
                wait_for(
                    lambda: ai_series(orthanc, study_uid, "KO") and all_runs_finished(runtime),
                    400,
                    "the rejection note in Orthanc and the run finished",
                    second.log,
                )

        reprocess_run = http_json(f"{api_url}/flow_runs/{scheduled['flow_run_id']}")
        assert isinstance(reprocess_run, dict)
        started = dt.datetime.fromisoformat(reprocess_run["start_time"])
        assert started >= start_at.astimezone() - dt.timedelta(seconds=1)
        assert [(v, s) for v, s, _, _ in runs_of(runtime)] == [
            ("0.1.0", RunStatus.SUCCEEDED),
            ("0.2.0", RunStatus.SUCCEEDED),
        ]
        (kos_series,) = ai_series(orthanc, study_uid, "KO")
        (kos_id,) = kos_series["Instances"]
        note = dcmread(BytesIO(orthanc.get(f"/instances/{kos_id}/file")))
        assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
        withdrawn = {
            sop.ReferencedSOPInstanceUID
            for study in note.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
        }
        assert withdrawn == first_ai
        assert len(ai_series(orthanc, study_uid, "SR")) == 2


def prefect_state(api_url: str, runtime: Runtime) -> str | None:
    """The Prefect state type of the study's only triage run's flow run (None: none yet)."""
    runs = runs_of(runtime)
    if len(runs) != 1 or not runs[0][3]:
        return None
    flow_run = http_json(f"{api_url}/flow_runs/{runs[0][3]}")
    return flow_run["state"]["type"] if isinstance(flow_run, dict) else None


def flow_run_in(candidate: Worker) -> bool:
    """Whether the worker is executing a flow run now (a ``prefect.engine`` process in its
    process group: the worker started in a session of its own)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            group = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if group == candidate.process.pid and b"prefect.engine" in command:
            return True
    return False


def copy_study(study_dir: Path, target: Path, tag: str) -> tuple[str, list[Path]]:
    """The study with new UIDs (another patient's visit, as far as the node can tell)."""
    target.mkdir(parents=True)
    study_uid, series_uid = (derived_uid(tag, part) for part in ("study", "series"))
    files = []
    for path in sorted(study_dir.glob("*.dcm")):
        dataset = dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPInstanceUID = derived_uid(tag, path.name)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(target / path.name, enforce_file_format=True)
        files.append(target / path.name)
    return study_uid, files


@contextmanager
def node_process(settings: Settings, home: Path) -> Iterator[int]:
    """A `fracture-triage serve` process with ``settings`` (its own port)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = _worker_env(settings, home) | {
        "FRACTURE_TRIAGE_PORT": str(port),
        "FRACTURE_TRIAGE_STUDY_STABLE_SECONDS": str(settings.study_stable_seconds),
        "FRACTURE_TRIAGE_TRIAGE_TIMEOUT_SECONDS": str(settings.triage_timeout_seconds),
        "FRACTURE_TRIAGE_PREFECT_FLOW_HEARTBEAT": "false",
    }
    log = home / "node.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"], env=env, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port(port, timeout=240)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_two_nodes_and_two_workers_share_one_database_and_a_prefect_server(
    tmp_path: Path, test_bundle: Path, sample_studies: list[Path]
) -> None:
    """Beyond one machine: nodes behind a load balancer receive, workers triage, one
    PostgreSQL and one Prefect server; a worker killed mid-run loses nothing, and every
    study is triaged exactly once. The store and outputs are shared storage (an NFS or
    SMB mount at the same path on every host in production; one folder here)."""
    with scratch_postgres_database() as database_url, prefect_server(tmp_path) as api_url:
        upgrade(make_engine(database_url))  # the owner migrates; nodes never do on PostgreSQL
        shared = tmp_path / "shared"
        settings = load_settings(
            None,
            store_dir=shared / "store",
            output_dir=shared / "outputs",
            database_url=database_url,
            model_bundle_dir=test_bundle,
            prefect_api_url=api_url,
            study_stable_seconds=1.0,
            triage_timeout_seconds=30.0,
        )
        studies = dict(
            copy_study(sample_studies[k % 3], tmp_path / "studies" / str(k), f"distributed-{k}")
            for k in range(6)
        )
        sessions = make_session_factory(make_engine(database_url))
        with (
            node_process(settings, tmp_path / "node-a") as port_a,
            node_process(settings, tmp_path / "node-b") as port_b,
            worker(settings, tmp_path / "worker-a") as worker_a,
            worker(settings, tmp_path / "worker-b") as worker_b,
        ):
            deployments_registered(api_url, worker_a.log)
            # The load balancer's part: studies spread over both nodes.
            for k, files in enumerate(studies.values()):
                port = (port_a, port_b)[k % 2]
                target = Destination(name="node", ae_title=settings.ae_title, host="127.0.0.1",
                                     port=port)  # fmt: skip
                assert all(o.success for o in send_files(files, target, "MODALITY"))
            busy = wait_for(
                lambda: _busy_worker(sessions, (worker_a, worker_b)),
                400,
                "a flow run triaging on a worker",
                worker_a.log,
                step=0.05,
            )
            assert isinstance(busy, Worker)
            busy.kill()  # mid-run: the flow run's process dies with its worker
            wait_for(
                lambda: _all_triaged(sessions, studies),
                600,
                "every study triaged by the surviving worker",
                (worker_b if busy is worker_a else worker_a).log,
            )
        _assert_triaged_exactly_once(sessions, studies, api_url)


def _busy_worker(sessions: sessionmaker[Session], workers: tuple[Worker, ...]) -> Worker | None:
    """A worker executing a flow run while a triage run is open in the database."""
    with sessions() as session:
        running = session.scalar(select(TriageRun.id).where(TriageRun.status == RunStatus.RUNNING))
    if running is None:
        return None
    return next((candidate for candidate in workers if flow_run_in(candidate)), None)


def _all_triaged(sessions: sessionmaker[Session], studies: dict[str, list[Path]]) -> bool:
    with sessions() as session:
        repository = StudyRepository(session)
        return all(
            (study := repository.get(uid)) is not None and study.status is StudyStatus.TRIAGED
            for uid in studies
        )


def _assert_triaged_exactly_once(
    sessions: sessionmaker[Session], studies: dict[str, list[Path]], api_url: str
) -> None:
    with sessions() as session:
        runs = session.execute(
            select(Study.study_instance_uid, TriageRun.status, TriageRun.error,
                   TriageRun.flow_run_id).join(TriageRun.study)
        ).all()  # fmt: skip
        received = set(session.scalars(select(Instance.sop_instance_uid)))
    for uid, files in studies.items():
        statuses = [status for study, status, _, _ in runs if study == uid]
        assert statuses.count(RunStatus.SUCCEEDED) == 1, (uid, statuses)
        assert {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files} <= received
    # The kill usually lands mid-run (that run is failed as lost and the study triaged
    # again); a run that finished between the check and the kill leaves nothing to recover.
    lost = [(error, flow_run) for _, status, error, flow_run in runs if status is RunStatus.FAILED]
    assert all(error == RUN_WORKER_LOST for error, _ in lost), lost
    for _, flow_run_id in lost:  # the lost flow runs were marked crashed on the server
        crashed = http_json(f"{api_url}/flow_runs/{flow_run_id}")
        assert isinstance(crashed, dict) and crashed["state"]["type"] == "CRASHED"
