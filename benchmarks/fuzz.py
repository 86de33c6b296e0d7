"""Fuzzing, full size: thousands of mutated data sets through the store handler and
the preprocessing path, with the checks of the CI-sized tests.

The same harness and strategy as ``tests/dicom_node/test_fuzz_store.py`` and
``tests/models/test_fuzz_preprocessing.py`` (``tests/fuzzing.py``); only the number of
cases differs, and cases run until ``--cases`` or ``--max-seconds``, whichever comes
first. A case that breaks a check stops the run with hypothesis's minimal example.
Reference for the time per case: the unmutated seeds, stored in the same run.

    python -m benchmarks.fuzz [--cases 3000] [--max-seconds 900] [--json out.json]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_report
from config import load_settings
from tests.fuzzing import (
    Case,
    StoreOutcome,
    cases,
    load_seeds,
    make_store_harness,
    preprocess_case,
    status_name,
    write_case,
)


def _percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns about every odd value it meets
    console = Console()
    seeds = load_seeds()
    with tempfile.TemporaryDirectory(prefix="ft-fuzz-") as scratch:
        directory = Path(scratch)
        harness = make_store_harness(
            load_settings(
                None,
                port=0,
                store_dir=directory / "store",
                database_url=f"sqlite:///{directory / 'audit.db'}",
            )
        )
        reference = [harness.store_case(Case(seed, ())).seconds for seed in seeds * 5]
        store: list[StoreOutcome] = []
        reasons: Counter[str] = Counter()
        preprocessing: Counter[str] = Counter()
        preprocess_seconds: list[float] = []
        deadline = time.monotonic() + args.max_seconds

        @settings(
            max_examples=args.cases,
            deadline=None,  # the run's own figures show the slowest case
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases(seeds))
        def run(case: Case) -> None:
            if time.monotonic() > deadline:
                return
            outcome = harness.store_case(case)
            store.append(outcome)
            if outcome.reason:
                reasons[re.sub(r"\d+", "N", outcome.reason)[:60]] += 1
            path = write_case(case, directory)  # every case, stored or not
            try:
                result, seconds = preprocess_case(path)
            finally:
                path.unlink()
            preprocessing[result] += 1
            preprocess_seconds.append(seconds)

        started = time.monotonic()
        with console.status(f"fuzzing up to {args.cases} cases"):
            run()
        elapsed = time.monotonic() - started

    seconds = [o.seconds for o in store]
    statuses = Counter(status_name(o.status) for o in store)
    summary = {
        "cases": len(store),
        "elapsed_seconds": round(elapsed, 1),
        "store": dict(statuses),
        "refusal_reasons": dict(reasons.most_common()),
        "store_ms_median": 1000 * statistics.median(seconds),
        "store_ms_p99": 1000 * _percentile(seconds, 99),
        "store_ms_max": 1000 * max(seconds),
        "seed_store_ms_median": 1000 * statistics.median(reference),
        "preprocessing": dict(preprocessing),
        "preprocess_ms_median": 1000 * statistics.median(preprocess_seconds),
        "preprocess_ms_max": 1000 * max(preprocess_seconds),
    }
    table = Table(title=f"Fuzzing: {len(store)} cases in {elapsed:.0f} s, no check broken")
    table.add_column("What")
    table.add_column("Figure", justify="right")
    for name, count in sorted(statuses.items()):
        table.add_row(f"store handler: {name}", str(count))
    for name, count in reasons.most_common(8):
        table.add_row(f"  refused: {name}", str(count))
    table.add_row(
        "store ms per case: median / p99 / max",
        "{:.1f} / {:.1f} / {:.1f}".format(
            summary["store_ms_median"], summary["store_ms_p99"], summary["store_ms_max"]
        ),
    )
    table.add_row(
        "store ms per unmutated seed (reference)", f"{summary['seed_store_ms_median']:.1f}"
    )
    table.add_row(
        "max case / reference", f"{summary['store_ms_max'] / summary['seed_store_ms_median']:.1f}"
    )
    for name, count in preprocessing.most_common():
        table.add_row(f"preprocessing: {name}", str(count))
    table.add_row(
        "preprocess ms per case: median / max",
        "{:.1f} / {:.1f}".format(summary["preprocess_ms_median"], summary["preprocess_ms_max"]),
    )
    console.print(table)
    write_report(args.json, summary=summary)


if __name__ == "__main__":
    main()
