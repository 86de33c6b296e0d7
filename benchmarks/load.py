"""Load, full size: 2,000 instances over 8 concurrent associations into the running node.

One instance in ten is bad (malformed, or from an unknown AE). The node runs as
``fracture-triage serve`` (embedded mode, the demo bundle); the run checks every
instance's fate as the CI-sized test does (``tests/flows/test_load.py``) and reports
throughput and the node's peak resident memory. Reference for the memory figure: the
same node started and left idle, measured in the same run.

    python -m benchmarks.load --bundle var/bundles/demo [--instances 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import free_port, write_report
from tests.load import NodeProcess, node_env, run_load


def idle_node_rss(bundle: Path, directory: Path) -> int:
    """Peak RSS of the node started and idle for a few seconds (the reference)."""
    port = free_port()
    node = NodeProcess(node_env(directory, port, bundle), port, directory / "node.log")
    try:
        node.wait_listening()
        time.sleep(5)
        return node.peak_rss_bytes()
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("var/bundles/demo"))
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ft-load-") as scratch:
        idle_dir, load_dir = Path(scratch) / "idle", Path(scratch) / "load"
        idle_dir.mkdir()
        load_dir.mkdir()
        with console.status("idle node (reference)"):
            idle = idle_node_rss(args.bundle, idle_dir)
        with console.status(f"{args.instances} instances over {args.associations} associations"):
            result = run_load(load_dir, args.bundle, free_port(), args.instances, args.associations)
    mib = 1024**2
    table = Table(title=f"Load: {args.instances} instances, {args.associations} associations")
    table.add_column("What")
    table.add_column("Figure", justify="right")
    rows = [
        (
            "valid / malformed / unknown AE",
            f"{result.valid} / {result.malformed} / {result.unknown_ae}",
        ),
        ("studies triaged", str(result.studies)),
        ("C-STORE answers", ", ".join(f"{k}: {v}" for k, v in result.statuses.items())),
        ("send time (s)", f"{result.send_seconds:.1f}"),
        ("instances/s received", f"{result.instances / result.send_seconds:.1f}"),
        ("last study triaged after the last send (s)", f"{result.triage_seconds:.1f}"),
        ("node peak RSS (MiB)", f"{result.peak_rss_bytes / mib:.0f}"),
        ("idle node peak RSS, reference (MiB)", f"{idle / mib:.0f}"),
        ("peak RSS / idle", f"{result.peak_rss_bytes / idle:.2f}"),
        ("problems", str(len(result.problems))),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for problem in result.problems[:20]:
        console.print(f"[red]{problem}[/red]")
    write_report(args.json, idle_rss_bytes=idle, result=result.as_dict())
    raise SystemExit(1 if result.problems else 0)


if __name__ == "__main__":
    main()
