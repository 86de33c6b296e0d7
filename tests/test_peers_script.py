"""deploy/peers.sh, which `make test` runs first: one line naming what is missing.

Run with a PATH of stand-ins (so the outcome does not depend on this machine's packages)
and, when the tests run as root, as nobody: a non-root caller is told, never installed for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "peers.sh"
BINARIES = (
    "storescu",
    "storescp",
    "Orthanc",
    "dciodvfy",
    "docker-compose",
    "chromium",
    "chromedriver",
    "pg_ctlcluster",
)
NOBODY = 65534


def _tools(folder: Path, present: tuple[str, ...], psql_status: int | None) -> Path:
    """A PATH folder: the shell tools the script uses, and stand-ins for ``present``."""
    folder.mkdir(mode=0o755)
    for tool in ("sh", "id", "sed", "sort", "tail", "ls", "echo", "test"):
        real = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if real.stdout.strip().startswith("/"):
            (folder / tool).symlink_to(real.stdout.strip())
    stand_ins = dict.fromkeys(present, 0)
    if psql_status is not None:
        stand_ins["psql"] = psql_status
    for name, status in stand_ins.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\nexit {status}\n")
        path.chmod(0o755)
    return folder


def _run(path: Path, plugins: Path, **env: str) -> subprocess.CompletedProcess[str]:
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), "ensure"],
        env={"PATH": str(path), "ORTHANC_PLUGINS": str(plugins), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **as_nobody,  # type: ignore[arg-type]
    )


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder nobody may enter (pytest's temporary folders are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="ft-peers-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def plugins(world: Path) -> Path:
    folder = world / "plugins"
    folder.mkdir()
    return folder


def test_missing_peers_are_named_in_one_line_with_the_command(world: Path, plugins: Path) -> None:
    result = _run(_tools(world / "bin", (), None), plugins)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "make test: missing test peers (Debian packages): dcmtk orthanc orthanc-dicomweb "
        "orthanc-webviewer dicom3tools docker-compose chromium chromium-driver "
        "postgresql-client postgresql; install them with: sudo make peers\n"
    )


def test_all_peers_present_is_silent_and_an_unreachable_postgresql_is_one_line(
    world: Path, plugins: Path
) -> None:
    for plugin in ("libOrthancDicomWeb.so", "libOrthancWebViewer.so"):
        (plugins / plugin).write_bytes(b"")
    ready = _run(_tools(world / "bin", BINARIES, 0), plugins)
    assert (ready.returncode, ready.stdout, ready.stderr) == (0, "", "")

    down = _run(
        _tools(world / "bin-down", BINARIES, 2),
        plugins,
        FRACTURE_TRIAGE_TEST_POSTGRES="postgresql://admin:hunter2@db.example.org/test",
    )
    assert down.returncode == 1
    assert down.stderr == (
        "make test: PostgreSQL not reachable at postgresql://admin:***@db.example.org/test; "
        "start it, or set FRACTURE_TRIAGE_TEST_POSTGRES\n"
    )
