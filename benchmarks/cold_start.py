"""The first study after a cold ``fracture-triage serve`` against the later ones.

For each variant (the warm-up at start on, as shipped; and off, for reference) and each
round, the variants taking turns, a fresh ``serve`` process starts with a fresh Prefect
home and a fresh SQLite database. Once its ``/readyz`` answers 200, a real Orthanc
pushes phantom studies one at a time, each after the previous study's SR arrived. Per
study, from the node's database: the seconds from READY to the SR stored in Orthanc.
Reported per variant, medians over the rounds: the seconds from the process's start to
ready, the first study's time, the later studies' time, and first / later (each round's
first study against the median of its own later ones). Every study is the same work
(one three-view study with a break, 1024 pixels square, sent again with new UIDs), so
the first and the later ones differ only in coming first. Several rounds, because one
study's time varies by up to a second with the phase of Prefect's heartbeat thread,
which each flow run joins at its end.

    python -m benchmarks.cold_start --bundle var/bundles/demo [--studies 5] [--rounds 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_phantom_study, write_report
from benchmarks.end_to_end import study_timings
from db.engine import make_engine, make_session_factory
from tests.peers import free_port, run_orthanc

console = Console()

#: Seconds a node may take from start to ready, and a study from push to SR.
START_TIMEOUT = 300.0
STUDY_TIMEOUT = 180.0


@dataclass(frozen=True)
class Round:
    """One cold start: seconds to ready, then each study's READY to SR, in sending order."""

    start_to_ready: float
    ready_to_sr: list[float]


@dataclass(frozen=True)
class ColdStart:
    variant: str
    rounds: int
    start_to_ready_s: float
    first_study_ready_to_sr_s: float
    later_studies_ready_to_sr_s: float
    first_to_later: float

    @classmethod
    def of(cls, variant: str, rounds: list[Round]) -> ColdStart:
        """Medians over the rounds; first / later per round first (the machine's speed
        drifts between rounds, so a round's first study is set against its own later ones)."""
        first = statistics.median(r.ready_to_sr[0] for r in rounds)
        later = statistics.median(t for r in rounds for t in r.ready_to_sr[1:])
        ratio = statistics.median(
            r.ready_to_sr[0] / statistics.median(r.ready_to_sr[1:]) for r in rounds
        )
        return cls(
            variant,
            len(rounds),
            round(statistics.median(r.start_to_ready for r in rounds), 1),
            round(first, 2),
            round(later, 2),
            round(ratio, 2),
        )


@dataclass(frozen=True)
class Ports:
    node: int  # the node's DICOM port (Orthanc's "triage" modality)
    http: int  # the node's /readyz
    pacs: int  # Orthanc's DICOM port
    pacs_ae_title: str


def node_environment(work: Path, bundle: Path, ports: Ports, warm_up: bool) -> dict[str, str]:
    """``serve``'s settings from the environment: Orthanc as the PACS, SQLite, fresh Prefect."""
    destination = {
        "name": "pacs",
        "ae_title": ports.pacs_ae_title,
        "host": "127.0.0.1",
        "port": ports.pacs,
    }
    values = {
        "PORT": ports.node,
        "STORE_DIR": work / "store",
        "OUTPUT_DIR": work / "outputs",
        "DATABASE_URL": f"sqlite:///{work / 'audit.db'}",
        "MODEL_BUNDLE_DIR": bundle,
        "STUDY_STABLE_SECONDS": 2.0,
        "WARM_UP_AT_START": str(warm_up).lower(),
        "HTTP__PORT": ports.http,
        "DESTINATIONS": json.dumps([destination]),
    }
    env = dict(os.environ) | {f"FRACTURE_TRIAGE_{k}": str(v) for k, v in values.items()}
    return env | {"PREFECT_HOME": str(work / "prefect")}


def wait_ready(process: subprocess.Popen[bytes], http_port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5):
                return  # 200: a 503 raises HTTPError
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError("the node did not become ready")


def identical_studies(out_dir: Path, count: int, rows: int = 1024) -> list[Path]:
    """``count`` copies of one 3-view study with a break: the same pixels, new UIDs.

    1024 pixels square: larger than the warm-up's views (twice the network's input).
    """
    return [
        write_phantom_study(out_dir, 0, 3, True, np.random.default_rng(13), rows=rows)
        for _ in range(count)
    ]


def one_round(work: Path, bundle: Path, studies: list[Path], warm_up: bool) -> Round:
    node_port, http_port = free_port(), free_port()
    modality = {"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)}
    with run_orthanc(work / "orthanc", modalities=modality) as orthanc:
        for study in studies:
            for path in sorted(study.glob("*.dcm")):
                orthanc.upload(path)
        ports = Ports(node_port, http_port, orthanc.dicom_port, orthanc.ae_title)
        env = node_environment(work / "node", bundle, ports, warm_up)
        log = work / "serve.log"
        started = time.monotonic()
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve"], env=env, stdout=handle, stderr=handle
            )
        try:
            wait_ready(process, http_port, log)
            start_to_ready = time.monotonic() - started
            sessions = make_session_factory(make_engine(f"sqlite:///{work / 'node' / 'audit.db'}"))
            for count, study in enumerate(studies, start=1):
                orthanc.request(
                    "POST",
                    "/modalities/triage/store",
                    {"Resources": [orthanc.study_id(study.name)], "Synchronous": False},
                )
                deadline = time.monotonic() + STUDY_TIMEOUT
                while len(study_timings(sessions)) < count:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the SR of study {count} did not arrive")
                    time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(timeout=120)
    ordered = sorted(study_timings(sessions), key=lambda timing: timing["sent"])
    return Round(start_to_ready, [timing["ready_to_sr"] for timing in ordered])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=5, help="sent one at a time (>= 2)")
    parser.add_argument("--rounds", type=int, default=3, help="cold starts per variant")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    variants = {"warm-up at start (shipped)": True, "no warm-up (reference)": False}
    rounds: dict[str, list[Round]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="ft-cold-") as temp:
        for number in range(args.rounds):
            for name, warm_up in variants.items():  # taking turns: load drifts over a run
                work = Path(temp) / f"{number}-{warm_up}"
                studies = identical_studies(work / "studies", max(2, args.studies))
                rounds[name].append(one_round(work, args.bundle.resolve(), studies, warm_up))
                console.print(f"round {number + 1} {name}: {rounds[name][-1]}")
    results = [ColdStart.of(name, done) for name, done in rounds.items()]
    table = Table(title="First study after a cold serve (seconds, READY to SR in Orthanc)")
    for column in ("variant", "rounds", "start to ready", "first study", "later", "first / later"):
        table.add_column(column)
    for row in results:
        table.add_row(*(str(value) for value in asdict(row).values()))
    console.print(table)
    raw = {name: [asdict(r) for r in done] for name, done in rounds.items()}
    write_report(args.json, results=[asdict(row) for row in results], rounds=raw)


if __name__ == "__main__":
    main()
