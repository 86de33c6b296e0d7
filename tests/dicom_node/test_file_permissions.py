"""Patient data at rest is owner-only: the store's folders and files, the SQLite audit DB."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.audit import AuditEventType, AuditLog
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from dicom_node.store import InstanceStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    # A site's umask may be 002 or 000; the node must not depend on a strict one.
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_store_folders_and_instances_are_owner_only(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    stored = store.write(b"DICM" * 64, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    path = store.absolute(stored.relative_path)
    assert mode(path) == 0o600
    assert mode(store.root) == 0o700
    assert mode(path.parent) == 0o700  # series
    assert mode(path.parent.parent) == 0o700  # study
    # A replaced instance keeps owner-only permissions too.
    stored = store.write(b"DICM" * 65, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert mode(path) == 0o600
    assert not list(path.parent.glob(".incoming-*"))


@pytest.mark.usefixtures("permissive_umask")
def test_sqlite_audit_database_and_its_journal_are_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "var" / "fracture_triage.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    with make_session_factory(engine).begin() as session:
        AuditLog(session).record(AuditEventType.STUDY_READY, study_instance_uid="1.2.3")
    try:
        files = [database, *database.parent.glob(f"{database.name}-*")]
        assert {f.name for f in files} >= {database.name, f"{database.name}-wal"}
        for path in files:
            assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    finally:
        engine.dispose()
