"""Fault tests: kill -9 of the node mid-association, and a burst over concurrent associations."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import func, select

from config import Settings
from db.engine import make_engine, make_session_factory
from db.models import Instance, RunStatus, Study, StudyStatus, TriageRun
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx
from tests.flows.conftest import node_environment
from tests.peers import free_port, require_binary, wait_for_port

pytestmark = pytest.mark.slow

STUDY = "1.2.826.0.1.3680043.10.3.1"


def crash_node_environment(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The node's environment, with a Prefect home of the test's own."""
    env = node_environment(settings, PORT=settings.port)
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return env


def start_node(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"], env=env, stdout=handle, stderr=handle
        )
    wait_for_port(port, timeout=120)
    return process


def view(index: int) -> Dataset:
    return make_dx(
        study_instance_uid=STUDY,
        series_instance_uid=f"{STUDY}.1",
        sop_instance_uid=f"{STUDY}.1.{index}",
        rows=128,
        columns=128,
        seed=index,
    )


def test_kill_9_mid_association_loses_no_acknowledged_instance(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(port=port, study_stable_seconds=1.0)
    env = crash_node_environment(settings, tmp_path)
    log = tmp_path / "node.log"
    node = start_node(env, port, log)

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title=settings.ae_title)
    assert assoc.is_established
    acknowledged: list[str] = []
    for index in range(1, 41):
        ds = view(index)
        if index == 15:
            node.send_signal(signal.SIGKILL)  # in the middle of the association
            node.wait(timeout=30)
        status = assoc.send_c_store(ds) if assoc.is_established else None
        if status is not None and getattr(status, "Status", None) == 0:
            acknowledged.append(str(ds.SOPInstanceUID))
    if assoc.is_established:
        assoc.abort()
    assert 10 <= len(acknowledged) < 40, "the kill did not land mid-association"

    # Every instance answered Success is on disk and in the DB.
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    store = InstanceStore(settings.store_dir)
    with sessions() as session:
        rows = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
    for uid in acknowledged:
        assert uid in rows, f"acknowledged instance {uid} missing from the DB"
        assert store.absolute(rows[uid]).is_file(), f"acknowledged instance {uid} not on disk"

    # After a restart the study is found, triaged, and the run is recorded.
    node = start_node(env, port, log)
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            with sessions() as session:
                status = session.scalar(
                    select(Study.status).where(Study.study_instance_uid == STUDY)
                )
            if status in (StudyStatus.TRIAGED, StudyStatus.FAILED):
                break
            time.sleep(0.5)
        assert status is StudyStatus.TRIAGED, log.read_text(errors="replace")[-3000:]
        with sessions() as session:
            runs = list(session.scalars(select(TriageRun)))
        assert [r.status for r in runs][-1] is RunStatus.SUCCEEDED
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        engine.dispose()


def test_burst_of_500_instances_over_4_associations_loses_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    storescu = require_binary("storescu", "dcmtk")
    from db.migrate import upgrade
    from dicom_node.receive.scp import StorageSCP

    settings = make_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    scp = StorageSCP(settings, sessions, InstanceStore(settings.store_dir))
    _, port = scp.start()
    try:
        batches = []
        for batch in range(4):
            directory = tmp_path / f"batch{batch}"
            directory.mkdir()
            for index in range(125):
                number = batch * 125 + index + 1
                ds = make_dx(
                    study_instance_uid=f"{STUDY}.{batch + 10}",
                    series_instance_uid=f"{STUDY}.{batch + 10}.1",
                    sop_instance_uid=f"{STUDY}.{batch + 10}.1.{number}",
                    rows=64,
                    columns=64,
                    seed=number,
                )
                ds.save_as(directory / f"{number}.dcm", enforce_file_format=True)
            batches.append(directory)

        def send(directory: Path) -> int:
            return subprocess.run(
                [
                    storescu,
                    "-aec",
                    settings.ae_title,
                    "+sd",
                    "127.0.0.1",
                    str(port),
                    str(directory),
                ],
                capture_output=True,
                timeout=300,
            ).returncode

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(send, batches)) == [0, 0, 0, 0]
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 500
        assert len(list(settings.store_dir.rglob("*.dcm"))) == 500
    finally:
        scp.stop()
        engine.dispose()
