"""Several receiving processes on the SCP's port (scp_processes > 1), with dcmtk's storescu."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from config import Settings, load_settings
from db.audit import AuditEventType, AuditLog, verify_chain
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Instance
from dicom_node.receive.scp import StorageSCP
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx
from tests.peers import require_binary

pytestmark = pytest.mark.peers

STUDY = "1.2.826.0.1.3680043.10.7"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not receiving anything.
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" not in status.read_text()


def _wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        port=0,
        store_dir=tmp_path / "store",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
        scp_processes=3,
    )


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for index in range(1, 41):
        ds = make_dx(
            study_instance_uid=f"{STUDY}.{index % 4}",
            series_instance_uid=f"{STUDY}.{index % 4}.1",
            sop_instance_uid=f"{STUDY}.{index % 4}.1.{index}",
            seed=index,
        )
        path = tmp_path / "send" / f"{index:03d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def scp(settings: Settings) -> Iterator[tuple[StorageSCP, int]]:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    node = StorageSCP(settings, make_session_factory(engine), InstanceStore(settings.store_dir))
    _, port = node.start()
    try:
        yield node, port
    finally:
        node.stop()
        engine.dispose()


def _storescu(port: int, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("storescu", "dcmtk"), "-aec", "FRACTURE_TRIAGE", "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _send_over_associations(port: int, files: list[Path], associations: int) -> None:
    lanes = [files[k::associations] for k in range(associations)]
    with ThreadPoolExecutor(associations) as pool:
        results = list(pool.map(lambda lane: _storescu(port, lane), lanes))
    for result in results:
        assert result.returncode == 0, result.stderr


def test_every_instance_is_stored_once_across_receiving_processes(
    settings: Settings, scp: tuple[StorageSCP, int], files: list[Path]
) -> None:
    node, port = scp
    children = node.receiver_pids
    assert len(children) == 2 and all(_alive(pid) for pid in children)
    _send_over_associations(port, files, associations=8)

    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(files)
        audit = AuditLog(session)
        assert len(audit.of_type(AuditEventType.INSTANCE_STORED)) == len(files)
        assert len(audit.of_type(AuditEventType.ASSOCIATION_ACCEPTED)) == 8
        # Appends from several processes still form one unbroken chain.
        assert verify_chain(session).ok
    assert len(list(settings.store_dir.rglob("*.dcm"))) == len(files)

    node.stop()
    assert _wait_until(lambda: not any(_alive(pid) for pid in children), 30)


def test_associations_take_turns_over_the_processes(
    settings: Settings, scp: tuple[StorageSCP, int], files: list[Path]
) -> None:
    """Round robin: 6 associations over 3 processes are 2 each, whatever their ports."""
    node, port = scp
    for path in files[:6]:
        assert _storescu(port, [path]).returncode == 0
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        accepted = AuditLog(session).of_type(AuditEventType.ASSOCIATION_ACCEPTED)
    served = Counter(event.detail["receiver_pid"] for event in accepted)
    assert served == {os.getpid(): 2, **dict.fromkeys(node.receiver_pids, 2)}


def test_probes_are_counted_in_every_receiving_process(
    settings: Settings, scp: tuple[StorageSCP, int]
) -> None:
    """Connections that close before a byte, taken in turn by the three processes, all add
    to the node's one count; none is audited."""
    node, port = scp
    assert node.receiving == (3, 3)
    for _ in range(6):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    assert _wait_until(lambda: node.connection_probes == 6, 30)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        assert AuditLog(session).of_type(AuditEventType.CONNECTION_DROPPED) == []


def test_a_receiver_that_dies_is_started_again(
    scp: tuple[StorageSCP, int], files: list[Path], settings: Settings
) -> None:
    node, port = scp
    victim = node.receiver_pids[0]
    os.kill(victim, signal.SIGKILL)
    # Its turns meanwhile are the node's: no connection is lost while it restarts.
    for path in files[:3]:
        assert _storescu(port, [path]).returncode == 0
    assert _wait_until(
        lambda: len(node.receiver_pids) == 2 and victim not in node.receiver_pids, 60
    )
    _send_over_associations(port, files, associations=4)
    assert len(list(settings.store_dir.rglob("*.dcm"))) == len(files)


def test_receivers_die_with_a_killed_node(tmp_path: Path, settings: Settings) -> None:
    """kill -9 of the node must not leave receivers holding its port."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from config import load_settings
        from db.engine import make_engine, make_session_factory
        from db.migrate import upgrade
        from dicom_node.receive.scp import StorageSCP
        from dicom_node.store import InstanceStore

        if __name__ == "__main__":
            settings = load_settings(
                None, port=0, store_dir={str(settings.store_dir)!r},
                database_url={settings.database_url!r}, scp_processes=2,
            )
            engine = make_engine(settings.database_url)
            upgrade(engine)
            sessions = make_session_factory(engine)
            scp = StorageSCP(settings, sessions, InstanceStore(settings.store_dir))
            scp.start()
            print(*scp.receiver_pids, flush=True)
            time.sleep(600)
        """
    )
    (tmp_path / "node.py").write_text(script)
    node = subprocess.Popen(
        [sys.executable, str(tmp_path / "node.py")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert node.stdout is not None
        (child,) = map(int, node.stdout.readline().split())
        assert _alive(child)
        node.kill()
        node.wait(timeout=30)
        assert _wait_until(lambda: not _alive(child), 30), "the receiver outlived its node"
    finally:
        if node.poll() is None:
            node.kill()
