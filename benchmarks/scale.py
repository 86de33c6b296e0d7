"""Scale: per-image and per-study cost as views per study and queued studies grow.

Studies are put in the store and the database as the SCP would (no network), READY,
then drained by ``triage_batch`` runs exactly as the embedded node does (batches of
``batch_max_studies``, urgent first). Measured: seconds per image for 1 to 8 views per
study, seconds per study for 1 to 200 queued studies, and the speed-up a second
worker process gives on the same queue (PostgreSQL, both draining at once). Each
figure is set against the first row of its table, measured in the same run.

    python -m benchmarks.scale [--quick] [--json var/bench/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from benchmarks.common import machine_description, write_phantom_study
from config import load_settings
from db.migrate import upgrade
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_batch
from tests.flows.conftest import store_study

console = Console()


def make_runtime(
    work: Path, bundle: Path, database_url: str | None = None, **overrides: object
) -> Runtime:
    """A runtime rooted in ``work``; ``overrides`` are further settings (e.g. ``outputs``)."""
    values: dict[str, object] = {
        "store_dir": work / "store",
        "output_dir": work / "outputs",
        "database_url": database_url or f"sqlite:///{work / 'audit.db'}",
        "model_bundle_dir": bundle,
        "prefect_flow_heartbeat": False,
    }
    settings = load_settings(None, **(values | overrides))
    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    return runtime


def drain(runtime: Runtime) -> int:
    """triage_batch until nothing is READY; the number of studies triaged."""
    install_runtime(runtime)
    done = 0
    with flow_run_settings(False):
        while batch := triage_batch():
            done += len(batch)
    return done


def timed_drain(work: Path, bundle: Path, studies: list[Path]) -> float:
    runtime = make_runtime(work, bundle)
    for study in studies:
        store_study(runtime, study)
    runtime.model()  # loaded once per process, as in a worker
    started = time.perf_counter()
    assert drain(runtime) == len(studies)
    elapsed = time.perf_counter() - started
    runtime.close()
    return elapsed


def views_table(work: Path, bundle: Path, quick: bool) -> list[dict[str, object]]:
    rng = np.random.default_rng(3)
    rows = []
    studies_per_run = 2 if quick else 4
    for views in (1, 2, 4, 8):
        studies = [
            write_phantom_study(work / f"views-{views}", k, views, True, rng, "Scale")
            for k in range(studies_per_run)
        ]
        seconds = timed_drain(work / f"run-views-{views}", bundle, studies)
        rows.append(
            {"views_per_study": views, "seconds_per_image": seconds / (views * len(studies))}
        )
    base = rows[0]["seconds_per_image"]
    for row in rows:
        row["ratio_to_1_view"] = round(row["seconds_per_image"] / base, 2)  # type: ignore[operator]
        row["seconds_per_image"] = round(row["seconds_per_image"], 3)  # type: ignore[arg-type]
    return rows


def queue_table(work: Path, bundle: Path, quick: bool) -> list[dict[str, object]]:
    rng = np.random.default_rng(4)
    rows = []
    for queued in (1, 10, 50) if quick else (1, 10, 50, 200):
        studies = [
            write_phantom_study(work / f"queue-{queued}", k, 2, True, rng, "Scale")
            for k in range(queued)
        ]
        seconds = timed_drain(work / f"run-queue-{queued}", bundle, studies)
        rows.append({"queued_studies": queued, "seconds_per_study": seconds / queued})
    base = rows[0]["seconds_per_study"]
    for row in rows:
        row["ratio_to_1_study"] = round(row["seconds_per_study"] / base, 2)  # type: ignore[operator]
        row["seconds_per_study"] = round(row["seconds_per_study"], 3)  # type: ignore[arg-type]
    return rows


def second_worker(work: Path, bundle: Path, database_url: str, count: int) -> dict[str, object]:
    """One process draining ``count`` studies against two processes draining the same.

    Wall time from starting the processes to both ending, so each worker's start-up
    (imports, model load, its Prefect API) is included, as when a site adds a worker.
    """
    rng = np.random.default_rng(5)
    studies = [
        write_phantom_study(work / "workers", k, 2, True, rng, "Scale") for k in range(count)
    ]
    results = {}
    for workers in (1, 2):
        server = database_url.rsplit("/", 1)[0]
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        name = f"ft_scale_{os.getpid()}_{workers}"
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            connection.execute(text(f"CREATE DATABASE {name}"))
        url = f"{server}/{name}"
        runtime = make_runtime(work / f"workers-{workers}", bundle, url)
        for study in studies:
            store_study(runtime, study)
        runtime.close()
        env = dict(os.environ, PREFECT_HOME=str(work / f"prefect-{workers}"))
        command = [
            sys.executable, "-m", "benchmarks.scale", "--drain",
            str(work / f"workers-{workers}"), "--bundle", str(bundle), "--database-url", url,
        ]  # fmt: skip
        started = time.perf_counter()
        processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
        codes = [p.wait() for p in processes]
        results[workers] = time.perf_counter() - started
        assert codes == [0] * workers, codes
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return {
        "studies": count,
        "one_worker_seconds": round(results[1], 1),
        "two_workers_seconds": round(results[2], 1),
        "speed_up": round(results[1] / results[2], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers-studies", type=int, default=40)
    parser.add_argument("--drain", type=Path, help=argparse.SUPPRESS)  # a worker process
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.drain:
        import torch

        torch.set_num_threads(1)  # two workers on two cores
        runtime = make_runtime(args.drain, args.bundle, args.database_url)
        runtime.model()
        drain(runtime)
        return

    with tempfile.TemporaryDirectory(prefix="ft-scale-") as temp:
        work = Path(temp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
        # Warm-up (discarded): Prefect's API and torch's first calls, as in a running node.
        warm = write_phantom_study(work / "warm-up", 0, 2, True, np.random.default_rng(0))
        timed_drain(work / "run-warm-up", args.bundle, [warm])
        report = {
            "machine": machine_description(),
            "views": views_table(work, args.bundle, args.quick),
            "queue": queue_table(work, args.bundle, args.quick),
            "second_worker": second_worker(
                work, args.bundle, args.database_url, 10 if args.quick else args.workers_studies
            ),
        }
    for name in ("views", "queue"):
        rows = report[name]
        table = Table(title=f"Scale: {name}")
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
    console.print({"second worker": report["second_worker"]})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
