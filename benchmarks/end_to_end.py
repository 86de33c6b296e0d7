"""End to end: phantom studies pushed from Orthanc through the node and back as SRs.

A real Orthanc holds N phantom studies of 2 to 4 DX views; it pushes them (C-STORE)
to the node running embedded (SCP, completion watcher, ``triage_batch`` flows,
outbox), which sends its results back to the same Orthanc. Measured per study from
the audit database: the time from the study becoming ready to its SR being stored in
Orthanc (the C-STORE success), p50 and p95; studies per hour; the node's peak
resident memory. A second, profiled pass (cProfile on the triage thread, self time
grouped by package) gives the share of triage time spent in Prefect and in the
database against the models and the DICOM work. The first study after a cold start
is measured apart, against a real ``serve`` process: ``benchmarks.cold_start``.

    python -m benchmarks.end_to_end --studies 50 [--json var/bench/e2e.json]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.common import machine_description, write_phantom_study
from config import Destination, Settings, load_settings
from db.engine import make_engine, normalise_database_url
from db.migrate import upgrade
from db.models import Delivery, DeliveryStatus, OutputObject, Study, TriageRun
from flows.node.service import TriageService
from flows.runtime import Runtime
from flows.triage.payloads import TriageSummary
from tests.peers import Orthanc, free_port, run_orthanc

console = Console()

#: Self time in these packages counts as orchestration (Prefect and what it runs on).
ORCHESTRATION_PACKAGES = (
    "prefect",
    "anyio",
    "httpx",
    "httpcore",
    "h11",
    "pydantic",
    "pydantic_core",
    "cloudpickle",
    "websockets",
    "opentelemetry",
    "cachetools",
    "pendulum",
    "whenever",
)
#: Self time here counts as the database (our repositories, SQLAlchemy, the drivers).
DATABASE_PACKAGES = ("sqlalchemy", "sqlite3", "psycopg", "alembic", "/db/")
#: The models: torch, MONAI, numpy, our models package.
MODEL_PACKAGES = ("torch", "monai", "numpy", "scipy", "/models/")
#: DICOM work: reading, building and sending objects, rendering overlays.
DICOM_PACKAGES = ("pydicom", "highdicom", "pynetdicom", "PIL", "/dicom_node/", "pylibjpeg")


def write_studies(out_dir: Path, count: int, seed: int = 11) -> list[Path]:
    """``count`` phantom studies of 2 to 4 views (regions in turn, every other fractured)."""
    rng = np.random.default_rng(seed)
    return [
        write_phantom_study(out_dir, index, 2 + index % 3, index % 2 == 0, rng)
        for index in range(count)
    ]


class ProfiledService(TriageService):
    """The embedded service with cProfile around each triage batch (the triage thread)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.profile = cProfile.Profile()
        self._profile_lock = threading.Lock()

    def _triage_ready(self) -> list[TriageSummary]:
        with self._profile_lock:
            return self.profile.runcall(super()._triage_ready)


def _package_group(filename: str) -> str | None:
    """The group of a function by its file; None for the standard library and built-ins."""
    path = filename.replace("\\", "/")

    def has(package: str) -> bool:
        return package in path if package.startswith("/") else f"/{package}/" in path

    for group, packages in (
        ("orchestration", ORCHESTRATION_PACKAGES),
        ("database", DATABASE_PACKAGES),
        ("models", MODEL_PACKAGES),
        ("dicom", DICOM_PACKAGES),
    ):
        if any(has(p) for p in packages):
            return group
    if "site-packages" in path or "/flows/" in path or "/config/" in path:
        return "other"
    return None  # stdlib or built-in: charged to whoever called it


def self_time_shares(profile: cProfile.Profile) -> dict[str, float]:
    """Self time of the profiled thread grouped into orchestration, database, models, DICOM.

    Time in the standard library and in built-ins (a lock's ``acquire`` while the
    triage thread waits for Prefect's event loop, ``fsync``, ``socket.recv``) is
    charged to the groups of its callers, in proportion to the time each caller
    spent there, following the call graph up to the first function of a known group.
    """
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    names = ("orchestration", "database", "models", "dicom", "other")
    groups = dict.fromkeys(names, 0.0)
    shares: dict[tuple, dict[str, float]] = {}

    def share_of(key: tuple, visiting: frozenset) -> dict[str, float]:
        """How a function's self time splits over the groups (memoised over the graph)."""
        if key in shares:
            return shares[key]
        group = _package_group(key[0])
        callers = stats.get(key, (0, 0, 0, 0, {}))[4]
        if group is not None or not callers or key in visiting:
            result = {group or "other": 1.0}
        else:
            spent = sum(timing[2] for timing in callers.values()) or 1.0
            result = dict.fromkeys(names, 0.0)
            for caller, timing in callers.items():
                for name, part in share_of(caller, visiting | {key}).items():
                    result[name] += part * timing[2] / spent
        if key not in visiting:
            shares[key] = result
        return result

    for key, (_, _, self_time, _, _) in stats.items():
        for name, part in share_of(key, frozenset()).items():
            groups[name] += self_time * part
    total = sum(groups.values()) or 1.0
    return {name: round(value / total, 3) for name, value in groups.items()} | {
        "profiled_seconds": round(total, 1)
    }


def study_timings(sessions: sessionmaker[Session]) -> list[dict[str, float]]:
    """Per study: seconds from ready to the SR stored in the PACS, and from last instance."""
    rows = []
    with sessions() as session:
        query = (
            select(
                Study.ready_at, Study.last_received_at, Study.first_received_at, Delivery.sent_at
            )
            .join(TriageRun, TriageRun.study_id == Study.id)
            .join(OutputObject, OutputObject.run_id == TriageRun.id)
            .join(Delivery, Delivery.output_id == OutputObject.id)
            .where(OutputObject.kind == "sr", Delivery.status == DeliveryStatus.SENT)
        )
        for ready, last, first, sent in session.execute(query):
            rows.append(
                {
                    "ready_to_sr": (sent - ready).total_seconds(),
                    "last_instance_to_sr": (sent - last).total_seconds(),
                    "first_received": first.timestamp(),
                    "sent": sent.timestamp(),
                }
            )
    return rows


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@contextmanager
def pass_database(server_url: str | None, work: Path) -> Iterator[str]:
    """A fresh audit database for one pass (a pass counts what its database holds):
    SQLite in ``work``, or a new database on ``server_url``'s PostgreSQL server, migrated
    here and dropped afterwards."""
    if server_url is None:
        yield f"sqlite:///{work / 'audit.db'}"
        return
    server = make_url(normalise_database_url(server_url))
    name = f"ft_e2e_{work.name}_{os.getpid()}"
    admin = make_engine(
        server.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def node_and_pacs(work: Path, bundle: Path, database_url: str | None) -> Iterator[tuple]:
    node_port = free_port()
    with (
        pass_database(database_url, work) as url,
        run_orthanc(
            work / "orthanc", modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)}
        ) as orthanc,
    ):
        settings = load_settings(
            None,
            port=node_port,
            store_dir=work / "store",
            output_dir=work / "outputs",
            database_url=url,
            model_bundle_dir=bundle,
            study_stable_seconds=2.0,
            destinations=(
                Destination(
                    name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
                ),
            ),
        )
        yield orthanc, settings


def run_pass(
    orthanc: Orthanc, settings: Settings, studies: list[Path], profiled: bool, label: str
) -> dict[str, object]:
    """Upload, push, and wait until every study's SR is in Orthanc."""
    for study in studies:
        for path in sorted(study.glob("*.dcm")):
            orthanc.upload(path)
    runtime = Runtime.create(settings)
    service = (ProfiledService if profiled else TriageService)(runtime)
    started = time.monotonic()
    with service, Progress(console=console, transient=True) as progress:
        bar = progress.add_task(label, total=len(studies))
        for study in studies:  # the PACS routes one study after another
            study_uid = study.name
            orthanc.request(
                "POST",
                "/modalities/triage/store",
                {"Resources": [orthanc.study_id(study_uid)], "Synchronous": False},
            )
        deadline = time.monotonic() + 60 + 30 * len(studies)
        while True:
            done = len(study_timings(runtime.sessions))
            progress.update(bar, completed=done)
            if done >= len(studies):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {len(studies)} SRs arrived")
            time.sleep(0.5)
    wall = time.monotonic() - started
    timings = study_timings(runtime.sessions)
    span = max(t["sent"] for t in timings) - min(t["first_received"] for t in timings)
    latencies = [t["ready_to_sr"] for t in timings]
    result: dict[str, object] = {
        "studies": len(timings),
        "views": sum(len(list(s.glob("*.dcm"))) for s in studies),
        "ready_to_sr_p50_s": round(statistics.median(latencies), 2),
        "ready_to_sr_p95_s": round(percentile(latencies, 0.95), 2),
        "last_instance_to_sr_p50_s": round(
            statistics.median(t["last_instance_to_sr"] for t in timings), 2
        ),
        "studies_per_hour": round(len(timings) / span * 3600),
        "wall_seconds": round(wall, 1),
    }
    if isinstance(service, ProfiledService):
        result["self_time_shares"] = self_time_shares(service.profile)
    runtime.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--profiled-studies", type=int, default=12)
    parser.add_argument("--bundle", type=Path, default=None, help="default: train the demo")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (a fresh database a pass is made on it and dropped); "
        "default: SQLite in a temp dir",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ft-e2e-") as temp:
        work = Path(temp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
        bundle = args.bundle
        if bundle is None:
            from models.training.demo import train_demo_bundle

            bundle = train_demo_bundle(work / "bundle", progress=True)
        studies = write_studies(work / "studies", args.studies)
        profiled = write_studies(work / "profiled", args.profiled_studies, seed=12)
        with node_and_pacs(work / "timed", bundle, args.database_url) as (orthanc, settings):
            timed = run_pass(orthanc, settings, studies, False, "studies (timed)")
        with node_and_pacs(work / "profile", bundle, args.database_url) as (orthanc, settings):
            profile = run_pass(orthanc, settings, profiled, True, "studies (profiled)")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shares = profile["self_time_shares"]
    assert isinstance(shares, dict)
    overhead = shares["orchestration"] + shares["database"]
    report = {
        "machine": machine_description(),
        "date": dt.date.today().isoformat(),
        "timed": timed,
        "profiled": profile,
        "node_peak_rss_mib": round(peak_mib),
        "prefect_and_db_share": round(overhead, 3),
        "goal_prefect_and_db_under_10_percent": overhead < 0.10,
    }
    table = Table(title=f"End to end: {timed['studies']} studies, Orthanc -> node -> Orthanc")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in timed.items():
        table.add_row(key, str(value))
    table.add_row("node peak RSS (MiB)", str(report["node_peak_rss_mib"]))
    for key, value in shares.items():
        table.add_row(f"triage self time: {key}", str(value))
    table.add_row("Prefect + DB share (goal < 0.10)", str(report["prefect_and_db_share"]))
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
