"""Admin commands: reprocess, retry-outbox, purge (registered on the main CLI)."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from flows.runtime import Runtime

console = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file.", exists=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except SettingsError as error:
        console.print(f"[red]Invalid settings:[/red] {error}")
        raise typer.Exit(2) from None


def _runtime(settings: Settings) -> Runtime:
    from db.migrate import upgrade
    from flows.runtime import Runtime, install_runtime

    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    install_runtime(runtime)
    return runtime


def _emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    from rich.table import Table

    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    console.print(table)


def reprocess(
    config: ConfigOption = None,
    received_from: Annotated[
        dt.datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day.")
    ] = None,
    received_to: Annotated[
        dt.datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day.")
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option(help="Study status to select (repeatable), e.g. failed.")
    ] = None,
    region: Annotated[list[str] | None, typer.Option(help="Region to select (repeatable).")] = None,
    model_older_than: Annotated[
        str | None, typer.Option(help="Only studies last triaged by an older model version.")
    ] = None,
    source: Annotated[str, typer.Option(help="'local' store or 'pacs' (C-FIND + C-MOVE).")] = (
        "local"
    ),
    pacs: Annotated[
        str | None, typer.Option(help="Destination to query with --source pacs.")
    ] = None,
    at: Annotated[
        dt.datetime | None,
        typer.Option(
            help="Server mode: when the flow run starts (e.g. 2026-11-23T02:00); default now."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Server mode: follow the flow run until it ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Triage matching studies again with the configured model, showing progress.

    Embedded (no prefect_api_url): runs the reprocess flow here. Server mode:
    creates a flow run of the reprocess deployment, now or ``--at`` a later time,
    for a worker to execute (off-peak reprocessing), and prints its id.
    """
    if source not in ("local", "pacs"):
        raise typer.BadParameter(f"source must be 'local' or 'pacs', got {source!r}")
    settings = _settings(config)
    if settings.prefect_api_url:
        _schedule_reprocess(
            settings,
            {
                "received_from": received_from.date().isoformat() if received_from else None,
                "received_to": received_to.date().isoformat() if received_to else None,
                "statuses": list(status or ()),
                "regions": list(region or ()),
                "model_version_older_than": model_older_than,
                "source": source,
                "pacs": pacs,
                "requested_by": getpass.getuser(),
            },
            at,
            wait,
            as_json,
        )
        return
    if at is not None:
        raise typer.BadParameter("--at needs server mode (prefect_api_url)")
    runtime = _runtime(settings)
    from db.models import RunStatus, TriageRun, utcnow
    from flows.maintenance import ReprocessCriteria, select_studies
    from flows.maintenance import reprocess as reprocess_flow
    from flows.prefect_env import flow_run_settings

    start_day = received_from.date() if received_from else None
    end_day = received_to.date() if received_to else None
    try:
        criteria = ReprocessCriteria(
            start_day, end_day, tuple(status or ()), tuple(region or ()), model_older_than
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    expected = len(select_studies(runtime, criteria)) if source == "local" else None
    started = utcnow()
    outcome: dict[str, Any] = {}

    def run() -> None:
        with flow_run_settings(settings.prefect_flow_heartbeat):
            outcome.update(
                reprocess_flow(
                    received_from=start_day,
                    received_to=end_day,
                    statuses=tuple(status or ()),
                    regions=tuple(region or ()),
                    model_version_older_than=model_older_than,
                    source=source,  # type: ignore[arg-type]
                    pacs=pacs,
                    requested_by=getpass.getuser(),
                )
            )

    worker = threading.Thread(target=run, name="reprocess")
    worker.start()
    columns = (TextColumn("reprocessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=as_json) as progress:
        bar = progress.add_task("studies", total=expected)
        while worker.is_alive():
            with runtime.sessions() as session:
                done = session.scalar(
                    select(func.count())
                    .select_from(TriageRun)
                    .where(TriageRun.started_at >= started, TriageRun.status != RunStatus.RUNNING)
                )
            progress.update(bar, completed=done or 0)
            time.sleep(0.5)
        worker.join()
        finished = sum(outcome.get(k, 0) for k in ("triaged", "unchanged", "failed"))
        progress.update(bar, completed=finished)
    if not outcome:
        console.print("[red]reprocess failed; see the log[/red]")
        raise typer.Exit(1)
    _emit(outcome, as_json, "Reprocess")


def _schedule_reprocess(
    settings: Settings,
    parameters: dict[str, Any],
    at: dt.datetime | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Create (and optionally follow) a flow run of the reprocess deployment."""
    import os

    from prefect.deployments import run_deployment

    from flows.node.deployments import REPROCESS_DEPLOYMENT

    os.environ["PREFECT_API_URL"] = str(settings.prefect_api_url)
    when = at.astimezone() if at is not None else None  # naive --at: local time
    run = run_deployment(
        REPROCESS_DEPLOYMENT,
        parameters={k: v for k, v in parameters.items() if v not in (None, [])},
        scheduled_time=when,
        timeout=0,
        as_subflow=False,
    )
    if wait:
        from prefect.client.orchestration import get_client

        with (
            get_client(sync_client=True) as client,
            console.status(f"flow run {run.name}", spinner="dots") as spinner,
        ):
            while run.state is None or not run.state.is_final():
                time.sleep(2)
                run = client.read_flow_run(run.id)
                state = run.state.name if run.state else "unknown"
                spinner.update(f"flow run {run.name}: {state}")
    _emit(
        {
            "flow_run_id": str(run.id),
            "flow_run_name": run.name,
            "deployment": REPROCESS_DEPLOYMENT,
            "scheduled_time": (run.expected_start_time or run.next_scheduled_start_time),
            "state": run.state.name if run.state else None,
        },
        as_json,
        "Reprocess flow run",
    )


def retry_outbox(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Send every due delivery now."""
    _runtime(_settings(config))
    from flows.maintenance import retry_outbox as retry_flow

    _emit(retry_flow(), as_json, "Outbox")


def purge(
    older_than_days: Annotated[int, typer.Option(help="Delete pixel data older than this.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete stored pixel data older than N days; audit rows and results stay."""
    _runtime(_settings(config))
    from flows.maintenance import purge_store

    _emit(purge_store(older_than_days, requested_by=getpass.getuser()), as_json, "Purge")


def worker(config: ConfigOption = None) -> None:
    """Execute flow runs from the Prefect server (server mode): triage, reprocess, schedules."""
    import os

    settings = _settings(config)
    if not settings.prefect_api_url:
        console.print("[red]worker needs prefect_api_url (FRACTURE_TRIAGE_PREFECT_API_URL)[/red]")
        raise typer.Exit(2)
    # Prefect reads its API URL from the environment; flow runs inherit it, and the
    # FRACTURE_TRIAGE_* settings, in their subprocesses.
    os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    from db.engine import engine_from_settings
    from db.migrate import upgrade

    upgrade(engine_from_settings(settings))
    from prefect import serve

    from flows.node.deployments import deployments

    serve(*deployments(settings.retention_days), limit=1, print_starting_message=True)


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(reprocess)
    app.command("retry-outbox")(retry_outbox)
    app.command()(purge)
