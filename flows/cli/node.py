"""The node's commands: ``serve``, ``demo`` and ``run-study``."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config import Destination, Settings
from config.logs import configure_logging
from flows.cli.options import ConfigOption, console, fail, load, settings_for
from flows.cli.results import print_results

if TYPE_CHECKING:
    from flows.node.service import TriageService
    from flows.runtime import Runtime


def serve(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port of the storage SCP.")] = None,
    bind_address: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log_level DEBUG.")] = False,
) -> None:
    """Run the node: receive studies, triage them when complete, send the results."""
    settings = settings_for(
        config, port=port, bind_address=bind_address, log_level="DEBUG" if verbose else None
    )
    from flows.node.service import TriageService
    from flows.node.startup import NodeStartError
    from flows.runtime import Runtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service = TriageService(Runtime.create(settings))
    except OSError as error:
        fail(f"cannot start: {error.strerror or error} ({error.filename or ''})")
    try:
        host, bound_port = service.start()
    except (NodeStartError, OSError) as error:
        service.stop()
        fail(f"cannot start: {error}")
    console.print(f"{settings.ae_title} listening on {host}:{bound_port}", highlight=False)
    if service.operations.address is not None:
        http_host, http_port = service.operations.address
        console.print(f"health and metrics on http://{http_host}:{http_port}/", highlight=False)
    try:
        stop.wait()
    finally:
        service.stop()


def demo(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port for the demo node (0: any free port).")] = 0,
    samples_dir: Annotated[Path, typer.Option(help="Where sample studies are written.")] = Path(
        "var/samples"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 600,
) -> None:
    """Build the demo model if missing, send sample studies to a node over DICOM, show results.

    The console shows progress and the table; every log record goes to log/demo.log beside
    the store (var/log/demo.log by default).
    """
    settings = load(config, port=port, study_stable_seconds=2.0)
    log_file = settings.store_dir.parent / "log" / "demo.log"
    configure_logging(settings, console_level="WARNING", log_file=log_file)
    _ensure_bundle(settings.model_bundle_dir)
    from flows.node.service import TriageService
    from flows.runtime import Runtime
    from models.training.phantoms import write_sample_studies

    study_dirs = write_sample_studies(samples_dir)
    runtime = Runtime.create(settings)
    with TriageService(runtime) as service, _progress() as progress:
        _send_samples(service, settings, study_dirs, progress)
        _wait_for_results(runtime, [d.name for d in study_dirs], timeout, progress)
    print_results(runtime.sessions, [d.name for d in study_dirs], runtime.output_dir)
    console.print(f"Log: {log_file}", highlight=False)


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=False)


def _send_samples(
    service: TriageService, settings: Settings, study_dirs: list[Path], progress: Progress
) -> None:
    from dicom_node.delivery.dimse import send_files

    host, bound_port = service.address or ("127.0.0.1", settings.port)
    node = Destination(name="demo-node", ae_title=settings.ae_title, host=host, port=bound_port)
    files = [sorted(study_dir.glob("*.dcm")) for study_dir in study_dirs]
    task = progress.add_task("sending sample instances", total=sum(len(f) for f in files))
    for study_files in files:
        outcomes = send_files(study_files, node, "DEMO_MODALITY")
        failed = [o for o in outcomes if not o.success]
        if failed:
            fail(f"the demo node refused {len(failed)} instance(s): {failed[0].error}", 1)
        progress.advance(task, len(study_files))


def _wait_for_results(
    runtime: Runtime, study_uids: list[str], timeout: float, progress: Progress
) -> None:
    from db.models import StudyStatus
    from db.repositories import StudyRepository

    finished = (StudyStatus.TRIAGED, StudyStatus.FAILED, StudyStatus.NOT_TRIAGED)
    task = progress.add_task("triaging the sample studies", total=len(study_uids))
    deadline = time.monotonic() + timeout
    while True:
        with runtime.sessions() as session:
            done = StudyRepository(session).count_with_status(study_uids, finished)
        progress.update(task, completed=done)
        if done == len(study_uids):
            return
        if time.monotonic() > deadline:
            fail(f"{len(study_uids) - done} sample studies have no result after {timeout:g} s", 1)
        time.sleep(0.5)


def run_study(study_instance_uid: str, config: ConfigOption = None) -> None:
    """Triage one stored study now (again, if it was triaged before)."""
    settings = settings_for(config)
    from db.migrate import upgrade
    from db.repositories import StudyRepository
    from flows.prefect_env import flow_run_settings
    from flows.runtime import Runtime, install_runtime
    from flows.triage.flow import triage_study

    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    with runtime.sessions() as session:
        if StudyRepository(session).get(study_instance_uid) is None:
            fail(f"no study {study_instance_uid} in the database (see fracture-triage status)")
    install_runtime(runtime)
    with flow_run_settings(settings.flow_heartbeat):
        summary = triage_study(study_instance_uid, force=True)
    print_results(runtime.sessions, [summary.study_instance_uid], runtime.output_dir)


def _ensure_bundle(bundle_dir: Path) -> None:
    """The demo bundle, trained when missing or made by older training code."""
    from models.training.demo import demo_bundle_is_current, train_demo_bundle

    if demo_bundle_is_current(bundle_dir):
        return
    console.print(f"no current demo bundle at {bundle_dir}: training it on phantoms")
    train_demo_bundle(bundle_dir, progress=True)
