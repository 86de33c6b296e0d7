"""The instance store: bytes, digest and permissions, whichever way the digest is made;
the start-up sweep of the .part files crashed writes leave."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from dicom_node.store import (
    DIGEST_IN_THREAD_BYTES,
    PART_PREFIX,
    PART_SUFFIX,
    InstanceStore,
    PartialWriteSweep,
    remove_partial_writes,
    sweep_partial_writes,
)

STUDY, SERIES = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1"


@pytest.mark.parametrize(
    "size", [1_000, DIGEST_IN_THREAD_BYTES - 1, DIGEST_IN_THREAD_BYTES, 3_000_001]
)
def test_written_file_and_its_digest_match(tmp_path: Path, size: int) -> None:
    store = InstanceStore(tmp_path / "store")
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    stored = store.write(memoryview(data), STUDY, SERIES, f"{SERIES}.{size}")
    on_disk = store.absolute(stored.relative_path)
    assert on_disk.read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size_bytes == size
    assert on_disk.stat().st_mode & 0o777 == 0o600


def test_failed_large_write_leaves_no_part_file_and_no_hashing_thread(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    sop_uid = f"{SERIES}.7"
    # A folder where the instance's file must go: the final rename fails.
    blocked = store.absolute(store.relative_path(STUDY, SERIES, sop_uid))
    blocked.mkdir(parents=True)
    (blocked / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        store.write(b"\x01" * (2 * DIGEST_IN_THREAD_BYTES), STUDY, SERIES, sop_uid)
    assert not list(blocked.parent.glob(".incoming-*"))
    assert not [t for t in threading.enumerate() if t.name == "store-sha256"]


# -- start-up sweep of partial writes ------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    return make_session_factory(engine)


def _leftover(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=PART_PREFIX, suffix=PART_SUFFIX)
    os.write(fd, b"\x00" * size)
    os.close(fd)
    return Path(name)


def test_sweep_removes_leftover_part_files_and_audits_counts_only(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    store = InstanceStore(tmp_path / "store")
    kept = store.write(b"\x01" * 10, STUDY, SERIES, f"{SERIES}.1")
    series = store.absolute(kept.relative_path).parent
    leftovers = [_leftover(series, 100), _leftover(series, 50), _leftover(tmp_path / "out", 7)]
    sweeps = sweep_partial_writes(sessions, {"store": store.root, "outputs": tmp_path / "out"})
    assert sweeps == [PartialWriteSweep("store", 2, 150), PartialWriteSweep("outputs", 1, 7)]
    assert not any(path.exists() for path in leftovers)
    assert store.absolute(kept.relative_path).read_bytes() == b"\x01" * 10
    with sessions() as session:
        events = AuditLog(session).of_type(AuditEventType.PARTIAL_WRITES_REMOVED)
    assert [(e.detail["folder"], e.detail["files"], e.detail["size_bytes"]) for e in events] == [
        ("store", 2, 150),
        ("outputs", 1, 7),
    ]
    assert all(STUDY not in str(e.detail) for e in events)  # counts, never paths
    assert sweep_partial_writes(sessions, {"store": store.root}) == []  # nothing left


def test_sweep_leaves_a_write_in_progress_and_removes_a_crashed_one(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """A writer process holds its .part locked (write_durably); killed with SIGKILL, its
    lock goes with it and the next sweep removes the file."""
    folder = tmp_path / "store" / STUDY
    folder.mkdir(parents=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_WRITER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        held = Path(writer.stdout.readline().strip())
        assert held.is_file()
        assert remove_partial_writes(tmp_path / "store") == (0, 0)
        assert held.is_file()
        writer.kill()
        writer.wait(timeout=30)
        assert remove_partial_writes(tmp_path / "store") == (1, 3)
        assert not held.exists()
    finally:
        if writer.poll() is None:
            writer.kill()


_HOLDING_WRITER = """
import fcntl, os, sys, tempfile, time
from dicom_node.store import PART_PREFIX, PART_SUFFIX
fd, name = tempfile.mkstemp(dir=sys.argv[1], prefix=PART_PREFIX, suffix=PART_SUFFIX)
fcntl.flock(fd, fcntl.LOCK_EX)  # as write_durably holds it while it writes
os.write(fd, b"abc")
print(name, flush=True)
time.sleep(600)
"""
