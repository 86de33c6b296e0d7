"""The results table ``demo``, ``run-study`` and ``status`` print: one row a study.

Study UIDs are printed whole (never folded or cut), so that one can be pasted into
``fracture-triage audit --study``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from db.reports import StudyOverview, study_overviews
from flows.cli.options import console


def describe_outputs(outputs: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(outputs.items())) or "-"


def describe_deliveries(deliveries: dict[str, dict[str, int]]) -> str:
    parts = []
    for destination, statuses in sorted(deliveries.items()):
        counts = " ".join(f"{status} {count}" for status, count in sorted(statuses.items()))
        parts.append(f"{destination}: {counts}")
    return "; ".join(parts) or "-"


def _decision(study: StudyOverview) -> str:
    if study.level:
        return study.level
    if study.not_assessed_reason:
        return f"not assessed: {study.not_assessed_reason}"
    if study.run_error:
        return f"failed: {study.run_error}"
    return "-"


def results_table(studies: Sequence[StudyOverview], title: str = "Triage results") -> Table:
    table = Table(title=title)
    widest = max((len(study.study_instance_uid) for study in studies), default=5)
    table.add_column("study", no_wrap=True, min_width=widest)
    for column in ("status", "region", "probability", "decision", "outputs", "deliveries"):
        table.add_column(column, overflow="fold")
    for study in studies:
        probability = study.fracture_probability
        table.add_row(
            study.study_instance_uid,
            study.status,
            study.region or ("unsupported" if study.run_status == "succeeded" else "-"),
            f"{probability:.2f}" if probability is not None else "-",
            _decision(study),
            describe_outputs(study.outputs),
            describe_deliveries(study.deliveries),
        )
    return table


def print_results(
    sessions: sessionmaker[Session], study_uids: Sequence[str], output_dir: Path | None = None
) -> None:
    """The studies' table; with ``output_dir``, where their files are."""
    with sessions() as session:
        studies = study_overviews(session, study_uids)
    console.print(results_table(studies))
    if output_dir is not None:
        console.print(f"Output files: {output_dir}/<study UID>/<series UID>/<SOP UID>.dcm")
