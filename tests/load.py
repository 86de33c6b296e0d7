"""Load on the whole node: many instances over concurrent associations, some of them bad.

One harness for the CI-sized test (``tests/flows/test_load.py``) and the full-size
benchmark (``benchmarks/load.py``). The node runs as it does in production, as its
own process (``fracture-triage serve``, embedded mode: SCP, completion watcher,
triage flows with the demo bundle), so its peak resident memory is its own. Senders
are pynetdicom associations, one thread each; each study goes over one association
so that it becomes ready once. One instance in ten is bad: half of those are
malformed (pixel data cut short: refused 0xC000 and audited), half come from an AE
title the node does not know (association rejected and audited).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import func, select

from db.audit import AuditEventType
from db.engine import make_engine, make_session_factory
from db.models import AuditEvent, Instance, Study, StudyStatus
from tests.dicom_node.conftest import make_dx

KNOWN_AE = "MODALITY"
UNKNOWN_AE = "INTRUDER"
NODE_AE = "FRACTURE_TRIAGE"
ROOT = "1.2.826.0.1.3680043.10.5151"


@dataclass(frozen=True)
class Item:
    """One instance to send: ``kind`` is ``valid``, ``malformed`` or ``unknown_ae``."""

    kind: str
    study: int
    number: int

    @property
    def sop_instance_uid(self) -> str:
        return f"{ROOT}.{self.study + 1}.1.{self.number + 1}"

    def dataset(self) -> Dataset:
        ds = make_dx(
            study_instance_uid=f"{ROOT}.{self.study + 1}",
            series_instance_uid=f"{ROOT}.{self.study + 1}.1",
            sop_instance_uid=self.sop_instance_uid,
            rows=64,
            columns=64,
            seed=self.number,
        )
        ds.InstanceNumber = self.number + 1
        if self.kind == "malformed":
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # cut short
        return ds


def plan(instances: int, associations: int, per_study: int = 20) -> list[list[Item]]:
    """``instances`` items over ``associations`` senders; every tenth item is bad,
    alternately malformed and from an unknown AE."""
    items = []
    for index in range(instances):
        bad = index % 10 == 9
        kind = ("malformed" if (index // 10) % 2 == 0 else "unknown_ae") if bad else "valid"
        items.append(Item(kind, index // per_study, index % per_study))
    studies = sorted({item.study for item in items})
    return [
        [item for item in items if item.study in studies[lane::associations]]
        for lane in range(associations)
    ]


@dataclass
class SendReport:
    statuses: dict[str, int] = field(default_factory=dict)
    rejected_associations: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


def send_lane(port: int, lane: list[Item], report: SendReport, lock: threading.Lock) -> None:
    """One association for the lane's good and malformed items; a new association from
    the unknown AE for each of its unknown-AE items (each one rejected)."""
    known = AE(ae_title=KNOWN_AE)
    known.add_requested_context(DigitalXRayImageStorageForPresentation)
    intruder = AE(ae_title=UNKNOWN_AE)
    intruder.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = known.associate("127.0.0.1", port, ae_title=NODE_AE)
    try:
        for item in lane:
            if item.kind == "unknown_ae":
                rejected = intruder.associate("127.0.0.1", port, ae_title=NODE_AE)
                with lock:
                    if rejected.is_rejected:
                        report.rejected_associations += 1
                    else:
                        report.failures.append(f"{item.sop_instance_uid}: not rejected")
                if rejected.is_established:
                    rejected.release()
                continue
            if not assoc.is_established:
                with lock:
                    report.failures.append(f"{item.sop_instance_uid}: association lost")
                continue
            status = assoc.send_c_store(item.dataset())
            with lock:
                report.count(f"{item.kind} 0x{int(status.get('Status', 0xFFFF)):04X}")
    finally:
        if assoc.is_established:
            assoc.release()


class NodeProcess:
    """``fracture-triage serve`` in its own process, with its peak RSS read from /proc."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        with log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve"],
                env=env,
                stdout=handle,
                stderr=handle,
            )
        self.log = log

    def wait_listening(self, timeout: float = 180) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text(errors="replace")[-3000:])
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the node did not listen on {self.port}")

    def peak_rss_bytes(self) -> int:
        """VmHWM: the most resident memory the node has had so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def node_env(
    directory: Path, port: int, bundle: Path, stable_seconds: float = 10.0
) -> dict[str, str]:
    """The node's environment. The quiet period is 10 s (production: 30 s): on a loaded
    2-core machine a 2 s pause inside one association happened (3 of 100 studies were
    made ready, reopened by their next instance and made ready again; each still
    triaged once), and the check here is that a study is made ready exactly once."""
    env = dict(os.environ)
    values = {
        "PORT": port,
        "STORE_DIR": directory / "store",
        "OUTPUT_DIR": directory / "outputs",
        "DATABASE_URL": f"sqlite:///{directory / 'audit.db'}",
        "MODEL_BUNDLE_DIR": bundle,
        "STUDY_STABLE_SECONDS": stable_seconds,
        "PREFECT_FLOW_HEARTBEAT": "false",
        "ALLOWED_CALLING_AE_TITLES": f'["{KNOWN_AE}"]',
    }
    env.update({f"FRACTURE_TRIAGE_{key}": str(value) for key, value in values.items()})
    env["PREFECT_HOME"] = str(directory / "prefect")
    return env


@dataclass
class LoadResult:
    instances: int
    associations: int
    valid: int
    malformed: int
    unknown_ae: int
    studies: int
    send_seconds: float
    triage_seconds: float
    peak_rss_bytes: int
    statuses: dict[str, int]
    problems: list[str]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _counts(database_url: str) -> Iterator[tuple[str, object]]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            yield (
                "stored",
                {
                    uid
                    for (uid,) in session.execute(
                        select(Instance.sop_instance_uid).where(
                            Instance.sop_instance_uid.like(f"{ROOT}.%")
                        )
                    )
                },
            )
            yield (
                "statuses",
                dict(
                    session.execute(
                        select(Study.study_instance_uid, Study.status).where(
                            Study.study_instance_uid.like(f"{ROOT}.%")
                        )
                    ).all()
                ),
            )
            for kind in (
                AuditEventType.STUDY_READY,
                AuditEventType.TRIAGE_STARTED,
                AuditEventType.TRIAGE_FINISHED,
                AuditEventType.TRIAGE_FAILED,
            ):
                yield (
                    str(kind),
                    dict(
                        session.execute(
                            select(AuditEvent.study_instance_uid, func.count())
                            .where(AuditEvent.event_type == str(kind))
                            .group_by(AuditEvent.study_instance_uid)
                        ).all()
                    ),
                )
            yield (
                "refused",
                {
                    uid
                    for (uid,) in session.execute(
                        select(AuditEvent.sop_instance_uid).where(
                            AuditEvent.event_type == str(AuditEventType.INSTANCE_REFUSED)
                        )
                    )
                },
            )
            yield (
                "rejected",
                session.scalar(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.event_type == str(AuditEventType.ASSOCIATION_REJECTED))
                    .where(AuditEvent.actor == UNKNOWN_AE)
                ),
            )
    finally:
        engine.dispose()


def run_load(
    directory: Path,
    bundle: Path,
    port: int,
    instances: int,
    associations: int,
    triage_timeout: float = 900,
) -> LoadResult:
    """Run the load against a fresh node and check every instance's fate."""
    lanes = plan(instances, associations)
    items = [item for lane in lanes for item in lane]
    env = node_env(directory, port, bundle)
    node = NodeProcess(env, port, directory / "node.log")
    report, lock = SendReport(), threading.Lock()
    try:
        node.wait_listening()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=associations) as pool:
            list(pool.map(lambda lane: send_lane(port, lane, report, lock), lanes))
        sent = time.monotonic()
        valid_studies = {f"{ROOT}.{item.study + 1}" for item in items if item.kind == "valid"}
        database_url = env["FRACTURE_TRIAGE_DATABASE_URL"]
        deadline = time.monotonic() + triage_timeout
        while time.monotonic() < deadline:
            statuses = dict(_counts(database_url))["statuses"]
            done = {StudyStatus.TRIAGED, StudyStatus.FAILED, StudyStatus.NOT_TRIAGED}
            if all(statuses.get(uid) in done for uid in valid_studies):
                break
            time.sleep(1)
        triaged = time.monotonic()
        peak = node.peak_rss_bytes()
    finally:
        node.stop()

    found = dict(_counts(database_url))
    problems = list(report.failures)
    valid = {item.sop_instance_uid for item in items if item.kind == "valid"}
    malformed = {item.sop_instance_uid for item in items if item.kind == "malformed"}
    unknown = [item for item in items if item.kind == "unknown_ae"]
    if missing := valid - found["stored"]:
        problems.append(f"{len(missing)} valid instances not stored")
    if wrongly := (malformed | {i.sop_instance_uid for i in unknown}) & found["stored"]:
        problems.append(f"{len(wrongly)} invalid instances stored")
    if unaudited := malformed - found["refused"]:
        problems.append(f"{len(unaudited)} malformed instances refused without audit")
    if found["rejected"] != len(unknown) or report.rejected_associations != len(unknown):
        problems.append(
            f"{len(unknown)} unknown-AE associations, {report.rejected_associations} rejected, "
            f"{found['rejected']} audited"
        )
    for uid in sorted(valid_studies):
        status = found["statuses"].get(uid)
        if status != StudyStatus.TRIAGED:
            problems.append(f"study {uid} is {status}")
        for kind in ("study_ready", "triage_started", "triage_finished"):
            if found[kind].get(uid) != 1:
                problems.append(f"study {uid}: {found[kind].get(uid, 0)} x {kind}")
    return LoadResult(
        instances=instances,
        associations=associations,
        valid=len(valid),
        malformed=len(malformed),
        unknown_ae=len(unknown),
        studies=len(valid_studies),
        send_seconds=round(sent - started, 2),
        triage_seconds=round(triaged - sent, 2),
        peak_rss_bytes=peak,
        statuses=dict(sorted(report.statuses.items())),
        problems=problems,
    )
