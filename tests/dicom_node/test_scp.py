"""The storage SCP against real dcmtk peers (storescu, echoscu) over loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import select

from config import Settings
from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Instance
from dicom_node.scp import StorageSCP
from dicom_node.statuses import DATASET_DOES_NOT_MATCH_SOP_CLASS
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx
from tests.peers import require_binary


class RunningSCP:
    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.database_url)
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = InstanceStore(settings.store_dir)
        self.scp = StorageSCP(settings, self.sessions, self.store)
        self.host, self.port = self.scp.start()
        self.settings = settings

    def events(self, kind: AuditEventType) -> list:
        with self.sessions() as session:
            return AuditLog(session).of_type(kind)

    def stop(self) -> None:
        self.scp.stop()
        self.engine.dispose()


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[Callable[..., RunningSCP]]:
    started: list[RunningSCP] = []

    def start(**overrides: object) -> RunningSCP:
        from config import load_settings

        values: dict[str, object] = {
            "port": 0,
            "store_dir": tmp_path / "store",
            "database_url": f"sqlite:///{tmp_path / 'audit.db'}",
        }
        values.update(overrides)
        running = RunningSCP(load_settings(None, **values))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def write_study(directory: Path, count: int = 3) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ds = make_dx(
            study_instance_uid="1.2.826.0.1.3680043.10.1.1",
            series_instance_uid="1.2.826.0.1.3680043.10.1.1.1",
            sop_instance_uid=f"1.2.826.0.1.3680043.10.1.1.1.{index + 1}",
            seed=index,
        )
        path = directory / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_echoscu_gets_success(start_scp: Callable[..., RunningSCP]) -> None:
    echoscu = require_binary("echoscu", "dcmtk")
    node = start_scp()
    result = subprocess.run(
        [echoscu, "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_instances_are_on_disk_and_in_the_db(
    start_scp: Callable[..., RunningSCP], tmp_path: Path
) -> None:
    storescu = require_binary("storescu", "dcmtk")
    node = start_scp()
    files = write_study(tmp_path / "send")
    result = subprocess.run(
        [storescu, "-aet", "MODALITY", "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)]
        + [str(f) for f in files],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    with node.sessions() as session:
        instances = list(session.scalars(select(Instance).order_by(Instance.id)))
    assert [i.sop_instance_uid for i in instances] == [
        dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
    ]
    for instance, original in zip(instances, files, strict=True):
        stored = node.store.absolute(instance.path)
        assert stored.is_file()
        assert stored.stat().st_mode & 0o077 == 0  # owner-only
        assert dcmread(stored).PixelData == dcmread(original).PixelData
        assert instance.triageable and instance.calling_ae_title == "MODALITY"
    assert len(node.events(AuditEventType.INSTANCE_STORED)) == len(files)
    assert len(node.events(AuditEventType.ASSOCIATION_ACCEPTED)) == 1

    # The same instances again: stored once, audited as duplicates.
    subprocess.run(
        [storescu, "-aec", node.settings.ae_title, "127.0.0.1", str(node.port), str(files[0])],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with node.sessions() as session:
        assert len(list(session.scalars(select(Instance)))) == len(files)
    assert len(node.events(AuditEventType.INSTANCE_DUPLICATE)) == 1


def test_unknown_calling_ae_is_rejected_and_audited(start_scp: Callable[..., RunningSCP]) -> None:
    echoscu = require_binary("echoscu", "dcmtk")
    node = start_scp(allowed_calling_ae_titles=("KNOWN_PACS",))
    refused = subprocess.run(
        [echoscu, "-aet", "STRANGER", "-aec", node.settings.ae_title, "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=30,
    )
    assert refused.returncode != 0
    (event,) = node.events(AuditEventType.ASSOCIATION_REJECTED)
    assert event.actor == "STRANGER"
    allowed = subprocess.run(
        [
            echoscu,
            "-aet",
            "KNOWN_PACS",
            "-aec",
            node.settings.ae_title,
            "127.0.0.1",
            str(node.port),
        ],
        capture_output=True,
        timeout=30,
    )
    assert allowed.returncode == 0


def _send(node: RunningSCP, ds: Dataset) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


def test_path_traversal_uid_is_refused_and_nothing_is_written(
    start_scp: Callable[..., RunningSCP],
) -> None:
    node = start_scp()
    ds = make_dx(
        study_instance_uid="../../../etc",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
    )
    assert _send(node, ds) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    (event,) = node.events(AuditEventType.INSTANCE_REFUSED)
    assert "StudyInstanceUID" in event.detail["reason"]
    assert not any(p.suffix == ".dcm" for p in node.store.root.rglob("*"))
    # The node still answers afterwards.
    assert (
        _send(
            node,
            make_dx(
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
                sop_instance_uid="1.2.3.4.6",
            ),
        )
        == 0
    )
