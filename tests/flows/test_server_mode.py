"""Server mode: Orthanc -> node -> Prefect server -> worker (flow run) -> Orthanc."""

from __future__ import annotations

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
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from config import Destination, Settings
from db.models import RunStatus, TriageRun
from flows.runtime import Runtime
from flows.service import TriageService
from tests.peers import free_port, require, run_orthanc

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


@contextmanager
def worker(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    env = dict(os.environ)
    for key in ("STORE_DIR", "OUTPUT_DIR", "DATABASE_URL", "MODEL_BUNDLE_DIR", "PREFECT_API_URL"):
        env[f"FRACTURE_TRIAGE_{key}"] = str(getattr(settings, key.lower()))
    env["FRACTURE_TRIAGE_DESTINATIONS"] = json.dumps(
        [d.model_dump(mode="json") for d in settings.destinations]
    )
    env["PREFECT_HOME"] = str(tmp_path / "prefect-worker")
    env["PREFECT_API_URL"] = str(settings.prefect_api_url)
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_study_runs_through_prefect_server_and_a_worker(
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
        settings = make_settings(port=node_port, destinations=(pacs,), prefect_api_url=api_url)
        files = sorted(sample_studies[0].glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        with worker(settings, tmp_path) as worker_log:
            wait_for(
                lambda: http_json(f"{api_url}/deployments/name/triage-study/node"),
                240,
                "the worker to register its deployments",
                worker_log,
            )
            runtime = Runtime.create(settings)
            with TriageService(runtime):
                study_id = orthanc.study_id(study_uid)
                orthanc.request(
                    "POST",
                    "/modalities/triage/store",
                    {"Resources": [study_id], "Synchronous": True},
                )

                def sr_arrived_and_run_finished() -> bool:
                    # The SR reaches Orthanc while the flow still sends the other outputs;
                    # the run is finished after the last of them.
                    with runtime.sessions() as session:
                        run = session.scalars(select(TriageRun)).one_or_none()
                        if run is None or run.status is RunStatus.RUNNING:
                            return False
                    return any(
                        s["MainDicomTags"].get("Modality") == "SR"
                        for s in orthanc.series_of_study(study_uid)
                    )

                wait_for(sr_arrived_and_run_finished, 400, "the SR in Orthanc", worker_log)

        with runtime.sessions() as session:
            (run,) = session.scalars(select(TriageRun))
        assert run.status is RunStatus.SUCCEEDED
        assert run.flow_run_id  # executed as a Prefect flow run by the worker
        flow_run = http_json(f"{api_url}/flow_runs/{run.flow_run_id}")
        assert isinstance(flow_run, dict)
        assert flow_run["state"]["type"] == "COMPLETED"
        assert study_uid not in json.dumps(flow_run["name"])
