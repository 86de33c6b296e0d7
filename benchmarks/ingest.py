"""Ingest: dcmtk storescu -> our node vs. dcmtk storescp and Orthanc, the same files.

Every dcmtk end (storescu, storescp, and Orthanc, whose DICOM server is dcmtk's) runs with
``TCP_NODELAY=1`` in its environment: dcmtk disables Nagle's algorithm only then, and
without it each instance waits about 40 ms for a delayed ACK, which made earlier
references look slow. Orthanc is the second reference: a PACS that, like the node,
indexes every instance in a database (SQLite) and syncs its storage area before Success.

The node writes every instance durably (fsync of the file and its folder) and records
it with its audit event in the DB before answering Success; storescp writes without
fsync: a conservative reference. Each receiver runs at its best PDU size: storescp at
its largest (128 KiB), the node at its default (256 KiB; pynetdicom handles each PDU in
Python, so fewer, larger PDUs matter). The node runs with one receiving process and
with ``--scp-processes`` (connections in turn,
dicom_node.receive.receivers); ``--stock-receive`` adds
the node reading PDUs in pynetdicom's own 4 KiB steps (``bulk_reads=False``; the node's
bounded reads in dicom_node.receive.wire otherwise fill each PDU's buffer as the kernel
has bytes), so the gain is measured in the same run.

    python -m benchmarks.ingest                  # full: 40 x ~10 MB DX and 500 x ~130 KB
    python -m benchmarks.ingest --quick          # CI smoke size
    python -m benchmarks.ingest --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_report
from tests.peers import free_port, run_orthanc, wait_for_port

DX = "1.2.840.10008.5.1.4.1.1.1.1"
#: storescp's maximum PDU: the largest it accepts.
STORESCP_MAX_PDU = 131_072


def make_instance(study: str, series: str, side: int, seed: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (side, side), dtype=np.uint16).tobytes()
    return ds


def write_set(directory: Path, count: int, side: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        path = directory / f"{index:05d}.dcm"
        make_instance(study, series, side, index).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Measurement:
    receiver: str
    dataset: str
    associations: int
    instances: int
    megabytes: float
    seconds: float

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def send(files: list[Path], port: int, called: str, associations: int) -> float:
    chunks = [files[i::associations] for i in range(associations)]

    def one(chunk: list[Path]) -> None:
        subprocess.run(
            ["storescu", "-aec", called, "127.0.0.1", str(port), *map(str, chunk)],
            check=True,
            capture_output=True,
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=associations) as pool:
        list(pool.map(one, chunks))
    return time.perf_counter() - start


def storescp_receiver(work: Path) -> tuple[Callable[[], None], int]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "--fork", "--max-pdu", str(STORESCP_MAX_PDU), "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(out, ignore_errors=True)

    return stop, port


def orthanc_receiver(work: Path, round_index: int) -> tuple[Callable[[], None], int]:
    """A real Orthanc with its defaults (SQLite index, storage area synced before Success)."""
    stack = contextlib.ExitStack()
    orthanc = stack.enter_context(run_orthanc(work / f"orthanc{round_index}"))

    def stop() -> None:
        stack.close()
        shutil.rmtree(work / f"orthanc{round_index}", ignore_errors=True)

    return stop, orthanc.dicom_port


#: The node serving connections with pynetdicom's own request handler (4 KiB socket reads).
STOCK_RECEIVE = "node-pynetdicom-recv"


def node_receiver(
    work: Path, round_index: int, processes: int = 1, stock_receive: bool = False
) -> tuple[Callable[[], None], int]:
    from config import load_settings
    from db.engine import make_engine, make_session_factory
    from db.migrate import upgrade
    from dicom_node.receive.scp import StorageSCP
    from dicom_node.store import InstanceStore

    root = work / f"node{round_index}"
    settings = load_settings(
        None,
        port=0,
        store_dir=root / "store",
        database_url=f"sqlite:///{root / 'audit.db'}",
        max_associations=16,
        scp_processes=processes,
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    scp = StorageSCP(
        settings,
        make_session_factory(engine),
        InstanceStore(settings.store_dir),
        bulk_reads=not stock_receive,
    )
    _, port = scp.start()

    def stop() -> None:
        scp.stop()
        engine.dispose()
        shutil.rmtree(root, ignore_errors=True)

    return stop, port


def run(
    quick: bool, rounds: int, scp_processes: int = 2, stock_receive: bool = False
) -> list[Measurement]:
    sets = {
        "large": (8 if quick else 40, 1024 if quick else 2300),  # 2300^2 x 2 bytes ~ 10.6 MB
        "small": (60 if quick else 500, 256),  # 256^2 x 2 bytes ~ 131 KB
    }
    results: list[Measurement] = []
    # dcmtk (storescu, storescp, Orthanc's DICOM server) disables Nagle only with this.
    os.environ["TCP_NODELAY"] = "1"
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        work = Path(tmp)
        for name, (count, side) in sets.items():
            files = write_set(work / name, count, side)
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            name = f"{name}: {count} x DX {side}x{side} ({megabytes / count:.2f} MB)"
            for associations in (1, 4):
                receivers = ["storescp", "orthanc", "node"]
                if scp_processes > 1:
                    receivers.append(f"node-{scp_processes}p")
                if stock_receive:
                    receivers.append(STOCK_RECEIVE)
                for round_index in range(rounds):
                    # Rotate the order so no receiver always runs on a warm cache.
                    shift = round_index % len(receivers)
                    for receiver in receivers[shift:] + receivers[:shift]:
                        if receiver == "storescp":
                            stop, port = storescp_receiver(work)
                            called = "STORESCP"
                        elif receiver == "orthanc":
                            stop, port = orthanc_receiver(work, round_index)
                            called = "TESTPACS"
                        else:
                            processes = scp_processes if receiver == f"node-{scp_processes}p" else 1
                            stop, port = node_receiver(
                                work, round_index, processes, receiver == STOCK_RECEIVE
                            )
                            called = "FRACTURE_TRIAGE"
                        try:
                            seconds = send(files, port, called, associations)
                        finally:
                            stop()
                        results.append(
                            Measurement(receiver, name, associations, count, megabytes, seconds)
                        )
    return results


def _median(
    results: list[Measurement], dataset: str, associations: int, receiver: str
) -> Measurement:
    group = [
        m
        for m in results
        if (m.dataset, m.associations, m.receiver) == (dataset, associations, receiver)
    ]
    seconds = statistics.median(m.seconds for m in group)
    return Measurement(
        receiver, dataset, associations, group[0].instances, group[0].megabytes, seconds
    )


REFERENCES = ("storescp", "orthanc")


def summarise(results: list[Measurement]) -> list[dict[str, object]]:
    rows = []
    nodes = sorted({m.receiver for m in results if m.receiver not in REFERENCES})
    groups = sorted({(m.dataset, m.associations) for m in results})
    for (dataset, associations), receiver in [(g, r) for g in groups for r in nodes]:
        node = _median(results, dataset, associations, receiver)
        row: dict[str, object] = {
            "dataset": dataset,
            "associations": associations,
            "node": receiver,
            "node_instances_per_s": round(node.instances_per_s, 1),
            "node_mb_per_s": round(node.mb_per_s, 1),
        }
        for name in REFERENCES:
            reference = _median(results, dataset, associations, name)
            row[f"{name}_instances_per_s"] = round(reference.instances_per_s, 1)
            row[f"ratio_node_to_{name}"] = round(
                node.instances_per_s / reference.instances_per_s, 2
            )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scp-processes", type=int, default=2, help="the node's second configuration"
    )
    parser.add_argument(
        "--stock-receive",
        action="store_true",
        help=f"also {STOCK_RECEIVE}: the node reading in pynetdicom's own 4 KiB steps",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = run(args.quick, args.rounds, args.scp_processes, args.stock_receive)
    rows = summarise(results)
    table = Table(title="Ingest: node vs dcmtk storescp and Orthanc (median of rounds)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    write_report(args.json, rows=rows, raw=[asdict(m) for m in results])


if __name__ == "__main__":
    main()
