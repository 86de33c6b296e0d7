"""docs/operations.md's backup and restore, run for real: pg_dump of the audit database,
tar of the store and outputs, restored elsewhere; the restored trail verifies, stays
append-only, and the restored files match their recorded hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from config import load_settings
from db.audit import AuditEventType, AuditLog
from db.engine import engine_from_settings, make_session_factory
from db.repositories import ReceivedInstance, StudyRepository
from dicom_node.store import InstanceStore
from tests.peers import require_binary, scratch_postgres_database

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[1]
STUDY = "1.2.826.0.1.3680043.10.77.1"


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env={**os.environ, "FRACTURE_TRIAGE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )


def _record_a_study(database_url: str, store: InstanceStore) -> None:
    engine = engine_from_settings(load_settings(None, database_url=database_url))
    sessions = make_session_factory(engine)
    for index in (1, 2):
        sop = f"{STUDY}.1.{index}"
        stored = store.write(os.urandom(4096), STUDY, f"{STUDY}.1", sop)
        with sessions.begin() as session:
            StudyRepository(session).record_instance(
                ReceivedInstance(
                    STUDY, f"{STUDY}.1", sop, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
                    "DX", True, stored.relative_path, stored.size_bytes, stored.sha256, "MOD",
                )
            )  # fmt: skip
            AuditLog(session).record(
                AuditEventType.INSTANCE_STORED, study_instance_uid=STUDY, sop_instance_uid=sop
            )
    engine.dispose()


def test_backup_and_restore_of_the_database_and_the_store(tmp_path: Path) -> None:
    pg_dump = require_binary("pg_dump", "postgresql-client")
    pg_restore = require_binary("pg_restore", "postgresql-client")
    site, restored = tmp_path / "site", tmp_path / "restored"
    store = InstanceStore(site / "store")
    store.ensure()
    (site / "outputs").mkdir()
    with scratch_postgres_database() as source_url, scratch_postgres_database() as target_url:
        assert _cli(source_url, "db", "upgrade").returncode == 0
        _record_a_study(source_url, store)
        dump = tmp_path / "fracture_triage.dump"
        subprocess.run([pg_dump, "-Fc", "-f", str(dump), source_url], check=True, timeout=120)
        archive = tmp_path / "state.tgz"
        subprocess.run(
            ["tar", "czf", str(archive), "-C", str(site), "store", "outputs"],
            check=True,
            timeout=120,
        )

        restored.mkdir()
        subprocess.run(
            [pg_restore, "--clean", "--if-exists", "-d", target_url, str(dump)],
            check=True,
            timeout=120,
        )
        subprocess.run(["tar", "xzf", str(archive), "-C", str(restored)], check=True, timeout=120)

        verified = _cli(target_url, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "Audit chain intact: 2 event(s)" in verified.stdout
        engine = engine_from_settings(load_settings(None, database_url=target_url))
        try:
            with make_session_factory(engine)() as session:
                instances = StudyRepository(session).instances(STUDY)
            assert len(instances) == 2
            for instance in instances:
                data = (restored / "store" / instance.path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == instance.sha256
            with pytest.raises(DBAPIError), engine.begin() as connection:
                connection.exec_driver_sql("DELETE FROM audit_events")  # still append-only
        finally:
            engine.dispose()
