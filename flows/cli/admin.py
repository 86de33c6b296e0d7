"""Admin commands: ``reprocess``, ``retry-outbox``, ``purge`` and ``worker``."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config import Settings
from db.models import StudyStatus
from flows.cli.options import (
    ConfigOption,
    DryRunOption,
    JsonOption,
    console,
    emit,
    fail,
    settings_for,
)
from flows.cli.status import open_database

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from flows.maintenance import ReprocessCriteria
    from flows.runtime import Runtime

STATUSES = ", ".join(status.value for status in StudyStatus)


def _runtime(settings: Settings) -> Runtime:
    """The runtime, its database brought to the code's revision, installed for the flows."""
    from db.migrate import upgrade
    from flows.runtime import Runtime, install_runtime

    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    install_runtime(runtime)
    return runtime


@dataclass(frozen=True)
class ReprocessRequest:
    """The reprocess flow's parameters, as the CLI passes them (embedded or server mode)."""

    received_from: dt.date | None
    received_to: dt.date | None
    statuses: tuple[str, ...]
    regions: tuple[str, ...]
    model_version_older_than: str | None
    source: str
    pacs: str | None
    requested_by: str

    def flow_run_parameters(self) -> dict[str, object]:
        """As a deployment's flow run takes them: JSON values, unset ones left out."""
        values: dict[str, object] = {
            **asdict(self),
            "received_from": self.received_from.isoformat() if self.received_from else None,
            "received_to": self.received_to.isoformat() if self.received_to else None,
            "statuses": list(self.statuses),
            "regions": list(self.regions),
        }
        return {key: value for key, value in values.items() if value not in (None, [])}

    def criteria(self) -> ReprocessCriteria:
        from flows.maintenance import ReprocessCriteria

        try:
            return ReprocessCriteria(
                self.received_from,
                self.received_to,
                self.statuses,
                self.regions,
                self.model_version_older_than,
            )
        except ValueError as error:
            fail(str(error))


RegionOption = Annotated[
    list[str] | None,
    typer.Option(help="Region, a body part the bundle assesses (repeatable), e.g. wrist."),
]


def reprocess(
    config: ConfigOption = None,
    received_from: Annotated[
        dt.datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day.")
    ] = None,
    received_to: Annotated[
        dt.datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day.")
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option(help=f"Study status (repeatable): {STATUSES}.")
    ] = None,
    region: RegionOption = None,
    model_older_than: Annotated[
        str | None, typer.Option(help="Only studies last triaged by an older model version.")
    ] = None,
    source: Annotated[str, typer.Option(help="'local' store or 'pacs' (C-FIND + C-MOVE).")] = (
        "local"
    ),
    pacs: Annotated[str | None, typer.Option(help="Destination to query with --source pacs.")] = (
        None
    ),
    at: Annotated[
        dt.datetime | None,
        typer.Option(help="Server mode: when the flow run starts (e.g. 2026-11-23T02:00)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Server mode: follow the flow run to its end.")] = (
        False
    ),
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Triage matching studies again with the configured model, showing progress.

    Embedded (no prefect_api_url): runs the reprocess flow here. Server mode: creates a
    flow run of the reprocess deployment, now or ``--at`` a later time, for a worker.
    """
    settings = settings_for(config)
    if source not in ("local", "pacs"):
        fail(f"--source must be 'local' or 'pacs', got {source!r}")
    request = ReprocessRequest(
        received_from.date() if received_from else None,
        received_to.date() if received_to else None,
        tuple(status or ()),
        tuple(region or ()),
        model_older_than,
        source,
        pacs,
        getpass.getuser(),
    )
    criteria = request.criteria()  # unknown statuses or regions: one line, before anything
    if dry_run:
        _reprocess_dry_run(settings, criteria, source, as_json)
    elif settings.prefect_api_url:
        _schedule_reprocess(settings, request, at, wait, as_json)
    elif at is not None:
        fail("--at needs server mode (prefect_api_url)")
    else:
        _reprocess_here(settings, request, criteria, as_json)


def _reprocess_dry_run(
    settings: Settings, criteria: ReprocessCriteria, source: str, as_json: bool
) -> None:
    if source != "local":
        fail("--dry-run lists the studies in the local database; use it with --source local")
    open_database(settings).dispose()  # exists, at the code's revision: nothing is changed
    from flows.maintenance import select_studies
    from flows.runtime import Runtime

    runtime = Runtime.create(settings)
    try:
        selected = select_studies(runtime, criteria)
    finally:
        runtime.close()
    if as_json:
        emit({"selected": len(selected), "studies": selected}, True, "")
        return
    for uid in selected:
        console.print(uid, highlight=False, soft_wrap=True)
    console.print(f"{len(selected)} studies would be triaged again (dry run: nothing done)")


def _reprocess_here(
    settings: Settings, request: ReprocessRequest, criteria: ReprocessCriteria, as_json: bool
) -> None:
    """Embedded: the reprocess flow in a thread, a progress bar over its runs here."""
    runtime = _runtime(settings)
    from db.models import utcnow
    from flows.maintenance import reprocess as reprocess_flow
    from flows.maintenance import select_studies
    from flows.prefect_env import flow_run_settings

    expected = len(select_studies(runtime, criteria)) if request.source == "local" else None
    started = utcnow()
    outcome: dict[str, int] = {}

    def run() -> None:
        with flow_run_settings(settings.flow_heartbeat):
            outcome.update(reprocess_flow(**asdict(request)))  # type: ignore[arg-type]

    worker = threading.Thread(target=run, name="reprocess")
    worker.start()
    _follow(runtime, worker, started, expected, disable=as_json)
    if not outcome:
        fail("reprocess failed; see the log", 1)
    emit(outcome, as_json, "Reprocess")


def _follow(
    runtime: Runtime,
    worker: threading.Thread,
    started: dt.datetime,
    total: int | None,
    disable: bool,
) -> None:
    from db.repositories import RunRepository

    columns = (TextColumn("reprocessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=disable) as progress:
        bar = progress.add_task("studies", total=total)
        while worker.is_alive():
            with runtime.sessions() as session:
                done = RunRepository(session).count_finished_since(started)
            progress.update(bar, completed=done)
            worker.join(timeout=0.5)


def _schedule_reprocess(
    settings: Settings, request: ReprocessRequest, at: dt.datetime | None, wait: bool, as_json: bool
) -> None:
    """Create (and with ``wait``, follow) a flow run of the reprocess deployment."""
    from prefect.deployments import run_deployment

    from flows.node.deployments import REPROCESS_DEPLOYMENT

    os.environ["PREFECT_API_URL"] = str(settings.prefect_api_url)
    run = run_deployment(
        REPROCESS_DEPLOYMENT,
        parameters=request.flow_run_parameters(),
        scheduled_time=at.astimezone() if at is not None else None,  # naive --at: local time
        timeout=0,
        as_subflow=False,
    )
    if wait:
        run = _follow_flow_run(run)
    emit(
        {
            "flow_run_id": str(run.id),
            "flow_run_name": run.name,
            "deployment": REPROCESS_DEPLOYMENT,
            "scheduled_time": run.expected_start_time or run.next_scheduled_start_time,
            "state": run.state.name if run.state else None,
        },
        as_json,
        "Reprocess flow run",
    )


def _follow_flow_run(run: FlowRun) -> FlowRun:
    from prefect.client.orchestration import get_client

    with (
        get_client(sync_client=True) as client,
        console.status(f"flow run {run.name}", spinner="dots") as spinner,
    ):
        while run.state is None or not run.state.is_final():
            time.sleep(2)
            run = client.read_flow_run(run.id)
            spinner.update(f"flow run {run.name}: {run.state.name if run.state else 'unknown'}")
    return run


def retry_outbox(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Send every due delivery now."""
    _runtime(settings_for(config))
    from flows.maintenance import retry_outbox as retry_flow

    emit(retry_flow(), as_json, "Outbox")


def purge(
    older_than_days: Annotated[
        int, typer.Option(min=0, help="Delete pixel data older than this many days.")
    ],
    config: ConfigOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete stored pixel data older than N days; audit rows and results stay."""
    settings = settings_for(config)
    if dry_run:
        open_database(settings).dispose()
        from flows.maintenance import purge_plan
        from flows.runtime import Runtime

        runtime = Runtime.create(settings)
        try:
            summary = purge_plan(runtime, older_than_days).summary
        finally:
            runtime.close()
        emit({**summary, "dry_run": True}, as_json, "Purge (dry run: nothing deleted)")
        return
    _runtime(settings)
    from flows.maintenance import purge_store

    emit(purge_store(older_than_days, requested_by=getpass.getuser()), as_json, "Purge")


def worker(config: ConfigOption = None) -> None:
    """Execute flow runs from the Prefect server (server mode): triage, reprocess, schedules."""
    settings = settings_for(config)
    if not settings.prefect_api_url:
        fail("worker needs prefect_api_url (FRACTURE_TRIAGE_PREFECT_API_URL)")
    # Prefect reads its API URL from the environment; flow runs inherit it, and the
    # FRACTURE_TRIAGE_* settings, in their subprocesses.
    os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    from db.engine import engine_from_settings
    from db.migrate import upgrade

    upgrade(engine_from_settings(settings))
    from prefect import serve

    from flows.node.deployments import deployments

    serve(*deployments(settings.retention_days), limit=1, print_starting_message=True)
