"""The instance store: bytes, digest and permissions, whichever way the digest is made."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from dicom_node.store import DIGEST_IN_THREAD_BYTES, InstanceStore

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
