"""``fracture-triage status``: the node's state, read from the database alone.

No Prefect server is started or asked, and no model is loaded: the answer comes in a
moment even while the node is down.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import Engine

from config import Settings
from db.engine import engine_from_settings, make_session_factory
from db.migrate import current_revision, head_revision
from db.reports import NodeStatus, node_status
from flows.cli.options import ConfigOption, JsonOption, console, fail, settings_for
from flows.cli.results import results_table
from flows.node.drift import DriftReport, drift_report


def status(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    latest: Annotated[int, typer.Option(min=0, help="How many recent studies to list.")] = 10,
) -> None:
    """Studies by status, every output kind, the outbox, model versions, drift, latest studies."""
    settings = settings_for(config)
    engine = open_database(settings)
    try:
        with make_session_factory(engine)() as session:
            report = node_status(session, latest)
            drift = drift_report(session, settings.drift, settings.model_bundle_dir)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(_as_json(report, drift), default=str))
        return
    for title, counts in (
        ("Studies", report.studies),
        ("Outputs produced", report.outputs),
        ("Outbox", report.deliveries),
        ("Model versions in use", report.models),
    ):
        table = Table("what", "count", title=title)
        for name, count in counts.items():
            table.add_row(name, str(count))
        console.print(table)
    for warning in drift.warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}")
    if report.latest:
        console.print(results_table(report.latest, title="Latest studies"))


def open_database(settings: Settings) -> Engine:
    """The configured database, checked to exist and to be at the code's revision."""
    path = settings.sqlite_path
    if path is not None and not path.exists():
        fail(f"no database at {path} (the node creates it; or run fracture-triage db upgrade)")
    engine = engine_from_settings(settings)
    current, head = current_revision(engine), head_revision()
    if current != head:
        engine.dispose()
        fail(
            f"the database is at revision {current or 'none'}, this version expects {head}: "
            "run fracture-triage db upgrade"
        )
    return engine


def _as_json(report: NodeStatus, drift: DriftReport) -> dict[str, object]:
    return {
        **asdict(report),
        "drift": {
            "window_hours": drift.window_hours,
            "warnings": drift.warnings,
            "checks": [{**asdict(check), "key": check.key} for check in drift.checks],
        },
    }
