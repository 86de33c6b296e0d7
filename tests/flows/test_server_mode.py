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

from config import Destination, Settings
from db.models import RunStatus, StudyStatus, TriageRun
from db.repositories import RUN_WORKER_LOST, StudyRepository
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.peers import Orthanc, free_port, require, run_orthanc

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
    predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(1)
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
        settings = make_settings(port=node_port, destinations=(pacs,), prefect_api_url=api_url)
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
            wait_for(lambda: study_status(runtime, study_uid) == StudyStatus.READY, 60, "ready")
            time.sleep(2)  # the node's first attempt to create the flow run fails meanwhile
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


def test_a_killed_worker_leaves_the_study_to_be_picked_up_again(
    tmp_path: Path, make_settings: Callable[..., Settings], sample_studies: list[Path]
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
            triage_timeout_seconds=30.0,
        )
        files = sorted(sample_studies[1].glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        runtime = Runtime.create(settings)
        with TriageService(runtime) as service:
            with worker(settings, tmp_path / "doomed-worker") as doomed:
                deployments_registered(api_url, doomed.log)
                orthanc.request(
                    "POST",
                    "/modalities/triage/store",
                    {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True},
                )
                deadline = time.monotonic() + 300
                while not any(s is RunStatus.RUNNING for _, s, _, _ in runs_of(runtime)):
                    assert time.monotonic() < deadline, doomed.log.read_text()[-4000:]
                    time.sleep(0.05)
                doomed.kill()  # mid-run: the flow run's process dies with the worker
            assert [s for _, s, _, _ in runs_of(runtime)] == [RunStatus.RUNNING]
            assert not ai_series(orthanc, study_uid, "SR")

            # After triage_timeout the node fails the lost run, marks its flow run
            # crashed (freeing the inference slot) and creates a new batch run; while
            # that one waits for a worker, a study handed on again joins it.
            wait_for(lambda: batch_runs(api_url) == 2, 120, "the new batch flow run")
            service.submit(study_uid).result(timeout=60)
            assert batch_runs(api_url) == 2
            with worker(settings, tmp_path / "second-worker") as second:
                wait_for(
                    lambda: ai_series(orthanc, study_uid, "SR") and all_runs_finished(runtime),
                    400,
                    "the SR after the restart and the run finished",
                    second.log,
                )
        (lost, redone) = runs_of(runtime)
        assert lost[1:3] == (RunStatus.FAILED, RUN_WORKER_LOST)
        assert redone[1] is RunStatus.SUCCEEDED
        crashed = http_json(f"{api_url}/flow_runs/{lost[3]}")
        completed = http_json(f"{api_url}/flow_runs/{redone[3]}")
        assert isinstance(crashed, dict) and isinstance(completed, dict)
        assert crashed["state"]["type"] == "CRASHED"
        assert completed["state"]["type"] == "COMPLETED"
        assert len(ai_series(orthanc, study_uid, "SR")) == 1
