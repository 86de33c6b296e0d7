"""The PACS is down while results are produced; when it is back, it gets each object once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from config import Destination, Settings
from db.models import Delivery, DeliveryStatus, RunStatus, TriageRun
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.peers import free_port, require_binary, run_orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def deliveries(runtime: Runtime) -> list[Delivery]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Delivery)))


def test_results_wait_for_the_pacs_and_arrive_exactly_once(
    tmp_path: Path, make_settings: Callable[..., Settings], sample_studies: list[Path]
) -> None:
    storescu = require_binary("storescu", "dcmtk")
    http_port, dicom_port = free_port(), free_port()
    pacs = Destination(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=dicom_port)
    settings = make_settings(
        destinations=(pacs,),
        outbox_retry_base_seconds=0.5,
        outbox_retry_cap_seconds=2.0,
        outbox_poll_seconds=0.5,
    )
    files = sorted(sample_studies[1].glob("*.dcm"))
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    runtime = Runtime.create(settings)
    with TriageService(runtime) as service:
        assert service.address is not None
        subprocess.run(
            [
                storescu,
                "-aec",
                settings.ae_title,
                "127.0.0.1",
                str(service.address[1]),
                *map(str, files),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # triaged, but the PACS is down
            with runtime.sessions() as session:
                run = session.scalar(select(TriageRun))
            if run is not None and run.status is RunStatus.SUCCEEDED and deliveries(runtime):
                break
            time.sleep(0.5)
        pending = deliveries(runtime)
        assert pending and all(d.status is DeliveryStatus.PENDING for d in pending)
        assert all(d.attempts >= 1 and d.last_error for d in pending)
        time.sleep(3)  # a few retries with backoff while it stays down

        with run_orthanc(
            tmp_path / "orthanc", http_port=http_port, dicom_port=dicom_port
        ) as orthanc:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if all(d.status is DeliveryStatus.SENT for d in deliveries(runtime)):
                    break
                time.sleep(0.5)
            assert all(d.status is DeliveryStatus.SENT for d in deliveries(runtime))
            ai_series = [
                s
                for s in orthanc.series_of_study(study_uid)
                if s["MainDicomTags"].get("SeriesDescription", "").startswith("AI")
            ]
            received = sum(len(s["Instances"]) for s in ai_series)
            assert received == len(deliveries(runtime))  # each object exactly once
