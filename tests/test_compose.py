"""docker-compose.yml: valid for `docker-compose config`, and its database wiring works.

Docker cannot run here, so the file is checked by the Debian docker-compose (which needs
no engine) and the parts that are ours are run for real: the PostgreSQL init script, the
migrations as the owner, the node under its restricted role.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
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
from tests.peers import POSTGRES_ADMIN_URL, require, require_binary, scratch_postgres_database

pytestmark = pytest.mark.peers

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
INIT_SCRIPT = REPO_ROOT / "deploy" / "postgres-init.sh"
NODE_ROLE = "fracture_triage_node"
#: A password written into a URL: user:password@host.
INLINE_PASSWORD = re.compile(r"://[^/@\s:]+:[^@\s]+@")


def compose_config(**variables: str) -> dict:
    """``docker-compose config`` of the stack, with the site's ``variables`` set."""
    binary = require_binary("docker-compose", "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_TRIAGE_")}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
        env={**env, **variables},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_config()


#: One-shot services: they run to completion at start-up (no healthcheck, no restart).
ONE_SHOT = {"migrate", "demo-bundle"}


def test_docker_compose_config_accepts_the_stack(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {
        "db", "prefect", "migrate", "demo-bundle", "node", "worker", "orthanc", "ohif",
        "ohif-proxy",
    }  # fmt: skip
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert "healthcheck" in service, f"{name} has no health check"
        assert service["restart"] == "unless-stopped", f"{name} is not restarted"
    for one_shot in sorted(ONE_SHOT):
        condition = services["node"]["depends_on"][one_shot]["condition"]
        assert condition == "service_completed_successfully"
    assert "/readyz" in " ".join(services["node"]["healthcheck"]["test"])


def test_images_are_pinned_to_versions(compose: dict) -> None:
    for name, service in compose["services"].items():
        if "image" not in service:
            assert "build" in service, name
            continue
        _, _, tag = service["image"].rpartition(":")
        assert re.match(r"^v?\d+(\.\d+)+", tag), f"{name}: {service['image']} is not pinned"
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), (
        "the Dockerfile's base is not pinned"
    )


def _published(service: dict) -> dict[int, str | None]:
    """Container port -> the host address it is published on (None: every interface)."""
    found = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found[int(port["target"])] = port.get("host_ip")
        else:  # "127.0.0.1:8042:8042/tcp"
            *host, _, target = str(port).split("/")[0].split(":")
            found[int(target)] = host[0] if host else None
    return found


def test_ui_and_orthanc_on_loopback_unless_the_site_says_otherwise(compose: dict) -> None:
    services = compose["services"]
    assert _published(services["prefect"]) == {4200: "127.0.0.1"}
    assert _published(services["orthanc"]) == {8042: "127.0.0.1", 4242: "127.0.0.1"}
    assert _published(services["node"]) == {11112: None, 9112: "127.0.0.1"}
    opened = compose_config(ORTHANC_BIND="0.0.0.0", PREFECT_UI_BIND="192.0.2.7")["services"]
    assert _published(opened["orthanc"]) == {8042: "0.0.0.0", 4242: "0.0.0.0"}
    assert _published(opened["prefect"]) == {4200: "192.0.2.7"}


def test_a_named_volume_for_each_piece_of_state(compose: dict) -> None:
    def named(service: dict) -> dict[str, str]:
        mounts = {}
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") == "volume":
                    mounts[volume["target"]] = volume["source"]
            else:
                source, target = str(volume).split(":")[:2]
                if not source.startswith((".", "/")):
                    mounts[target] = source
        return mounts

    services = compose["services"]
    state = {
        "/var/lib/fracture-triage/store": "triage-store",
        "/var/lib/fracture-triage/outputs": "triage-outputs",
        "/var/lib/fracture-triage/bundles": "triage-bundles",
    }
    assert named(services["node"]) == state and named(services["worker"]) == state
    assert named(services["db"]) == {"/var/lib/postgresql/data": "db-data"}
    assert named(services["orthanc"]) == {"/var/lib/orthanc/db": "orthanc-data"}
    assert set(compose["volumes"]) == {*state.values(), "db-data", "orthanc-data"}


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


# -- secrets: readable by the users the services run as ---------------------------------

#: The user an image's process reads its secrets as, where the compose file sets none:
#: postgres:15 switches from root to its postgres user (uid and gid 999, made in the
#: image's Dockerfile) with gosu before it reads POSTGRES_PASSWORD_FILE and runs the init
#: scripts; the Prefect image sets no USER, so its server runs as root.
IMAGE_USERS = {"postgres": (999, 999), "prefecthq/prefect": (0, 0)}


def _built_image_user() -> tuple[int, int]:
    """Our Dockerfile's USER, with the uid and gid its useradd/groupadd give it."""
    text = DOCKERFILE.read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    uid = re.search(rf"useradd [^\n]*--uid (\d+)[^\n]* {user}\b", text)
    gid = re.search(rf"groupadd [^\n]*--gid (\d+)[^\n]* {user}\b", text)
    assert uid and gid, "the Dockerfile must pin its user's uid and gid"
    return int(uid.group(1)), int(gid.group(1))


def service_user(service: dict) -> tuple[int, int]:
    if "user" in service:
        uid, _, gid = str(service["user"]).partition(":")
        return int(uid), int(gid or uid)
    if "build" in service:
        return _built_image_user()
    repository = service["image"].rsplit(":", 1)[0]
    return IMAGE_USERS[repository]


def _reads_as(path: Path, uid: int, gid: int) -> bool:
    result = subprocess.run(
        ["cat", str(path)], user=uid, group=gid, extra_groups=[], capture_output=True, timeout=30
    )
    return result.returncode == 0 and result.stdout.strip() != b""


def test_each_service_reads_its_secrets_as_its_own_user(compose: dict, tmp_path: Path) -> None:
    """`make secrets` files, mounted as compose mounts a file secret (the same inode: its
    host mode and owner), read by each service's user; the host folder stays owner-only."""
    require(os.geteuid() == 0, "reading as another user needs root")
    secrets = tmp_path / "secrets"
    made = subprocess.run(
        ["make", "-s", "secrets", f"SECRETS_DIR={secrets}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    # /run/secrets of a container: a folder anyone may enter (pytest's is root's alone).
    mounted = Path(tempfile.mkdtemp(prefix="ft-run-secrets-"))
    mounted.chmod(0o755)
    try:
        _check_secret_readers(compose, secrets, mounted)
    finally:
        shutil.rmtree(mounted)


def _check_secret_readers(compose: dict, secrets: Path, mounted: Path) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if not service.get("secrets"):
            continue
        uid, gid = service_user(service)
        for secret in service["secrets"]:
            source = secret["source"]
            host_file = secrets / Path(compose["secrets"][source]["file"]).name
            assert stat.S_IMODE(host_file.stat().st_mode) == 0o444
            target = mounted / f"{name}-{source}"
            os.link(host_file, target)
            assert _reads_as(target, uid, gid), f"{name} cannot read {source} as {uid}:{gid}"
            checked += 1
    assert checked == 7  # db 3, prefect 1, migrate 1, node 1, worker 1
    # The check bites: an owner-only file (what `make secrets` wrote before) is not read
    # by postgres in the db container.
    owner_only = mounted / "owner-only"
    owner_only.write_text("secret\n")
    owner_only.chmod(0o600)
    assert not _reads_as(owner_only, *IMAGE_USERS["postgres"])
