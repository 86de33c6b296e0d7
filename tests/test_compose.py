"""docker-compose.yml: valid for `docker-compose config`, and its database wiring works.

Docker cannot run here, so the file is checked by the Debian docker-compose (which needs
no engine) and the parts that are ours are run for real: the PostgreSQL init script, the
migrations as the owner, the node under its restricted role.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from config import load_settings
from db.audit import AuditEventType, AuditLog, verify_chain
from db.engine import engine_from_settings, make_session_factory
from tests.ohif import APP_CONFIG, OHIF_VERSION
from tests.peers import POSTGRES_ADMIN_URL, require_binary, scratch_postgres_database

pytestmark = pytest.mark.peers

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
INIT_SCRIPT = REPO_ROOT / "deploy" / "postgres-init.sh"
NODE_ROLE = "fracture_triage_node"
#: A password written into a URL: user:password@host.
INLINE_PASSWORD = re.compile(r"://[^/@\s:]+:[^@\s]+@")


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = require_binary("docker-compose", "docker-compose")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_TRIAGE_")},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_stack(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {
        "db",
        "prefect",
        "migrate",
        "node",
        "worker",
        "orthanc",
        "ohif",
        "ohif-proxy",
    }
    for name in set(services) - {"migrate"}:  # migrate is one-shot
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert services["node"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert set(compose["volumes"]) >= {"db-data", "triage-data", "orthanc-data"}


def test_no_password_in_the_file_and_the_node_uses_the_restricted_role(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert not INLINE_PASSWORD.search(str(value)), f"{name}.{key} holds a password"
            assert not (key.endswith("PASSWORD") and value), f"{name}.{key} holds a password"
    for name in ("node", "worker"):
        env = services[name]["environment"]
        assert env["FRACTURE_TRIAGE_DATABASE_URL"].startswith(f"postgresql://{NODE_ROLE}@")
        assert env["FRACTURE_TRIAGE_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_node_password"
        assert [s["source"] for s in services[name]["secrets"]] == ["db_node_password"]
    secrets = compose["secrets"]
    assert all(Path(s["file"]).parent.name == "secrets" for s in secrets.values())
    assert "secrets/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


@pytest.fixture
def init_script_roles() -> Iterator[None]:
    """Drops what the init script creates outside the scratch database, after the test."""
    yield
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS prefect WITH (FORCE)")
        admin.execute("DROP ROLE IF EXISTS prefect")
        admin.execute(f"DROP ROLE IF EXISTS {NODE_ROLE}")


def test_init_script_migrations_and_node_role_on_postgresql(
    tmp_path: Path, init_script_roles: None
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in {
        "db_owner_password": "owner-pw",
        "db_node_password": "node-pw",
        "prefect_db_password": "prefect-pw",
    }.items():
        (secrets / name).write_text(value + "\n")
    require_binary("psql", "postgresql-client")
    with scratch_postgres_database() as owner_url:
        user, host_db = re.match(r"postgresql://([^@:]+)[^@]*@(.+)$", owner_url).groups()
        host, port, database = re.match(r"([^:/]+):?(\d*)/(.+)$", host_db).groups()
        env = {
            **os.environ,
            "PGHOST": host,
            "PGPORT": port or "5432",
            "POSTGRES_USER": user,
            "POSTGRES_DB": database,
            "SECRETS_DIR": str(secrets),
        }
        init = subprocess.run(
            ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
        assert init.returncode == 0, init.stderr
        # Twice: a restarted init (or an existing role) must not break it.
        again = subprocess.run(
            ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0, again.stderr

        # The migrate service: `fracture-triage db upgrade` as the owner, password from a file.
        migrate_env = {
            **os.environ,
            "FRACTURE_TRIAGE_DATABASE_URL": owner_url,
            "FRACTURE_TRIAGE_DATABASE_PASSWORD_FILE": str(secrets / "db_owner_password"),
        }
        migrate = subprocess.run(
            [sys.executable, "-m", "flows.cli", "db", "upgrade"],
            env=migrate_env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "owner-pw" not in migrate.stdout + migrate.stderr

        # The node: its own login role, which may append to the audit trail, never edit it.
        node_url = owner_url.replace(f"//{user}", f"//{NODE_ROLE}", 1)
        node = load_settings(
            None,
            database_url=node_url,
            database_password_file=secrets / "db_node_password",
        )
        engine = engine_from_settings(node)
        try:
            sessions = make_session_factory(engine)
            with sessions.begin() as session:
                assert session.scalar(text("SELECT current_user")) == NODE_ROLE
                AuditLog(session).record(AuditEventType.STUDY_READY, study_instance_uid="1.2.3")
            for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"):
                with (
                    pytest.raises(DBAPIError, match="permission denied"),
                    engine.begin() as connection,
                ):
                    connection.exec_driver_sql(statement)
            with sessions() as session:
                assert verify_chain(session).ok
        finally:
            engine.dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'prefect'"
        ).fetchone()
    assert owner == ("prefect",)


def test_ohif_is_the_tested_viewer_on_loopback(compose: dict) -> None:
    """The compose stack's OHIF is the version and configuration the browser tests run."""
    services = compose["services"]
    assert services["ohif"]["image"] == f"ohif/app:v{OHIF_VERSION}"
    # docker-compose 1.x writes short forms: source:target:mode, ip:published:target/tcp.
    (config,) = services["ohif"]["volumes"]
    source, target, _mode = config.split(":")
    assert (Path(source), target) == (APP_CONFIG, "/usr/share/nginx/html/app-config.js")
    assert "ports" not in services["ohif"]  # only behind the proxy, with Orthanc's DICOMweb
    (port,) = services["ohif-proxy"]["ports"]
    assert str(port).startswith("127.0.0.1:"), port
    assert {"ohif", "orthanc"} <= set(services["ohif-proxy"]["depends_on"])
