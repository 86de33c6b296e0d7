"""The ``fracture-triage`` command line."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from sqlalchemy import select

from config import Destination, Settings, SettingsError, load_settings
from flows.cli import admin as admin_cli
from flows.cli.audit import audit_app

if TYPE_CHECKING:
    from flows.runtime import Runtime

app = typer.Typer(
    help="AI fracture triage node for musculoskeletal radiographs.", no_args_is_help=True
)
db_app = typer.Typer(help="Audit database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
admin_cli.register(app)
console = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file.", exists=True)
]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    # pynetdicom logs whole datasets at DEBUG; keep it to warnings so no PHI reaches a log.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one per line


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        console.print(f"[red]Invalid settings:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port of the storage SCP.")] = None,
    bind_address: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    verbose: bool = False,
) -> None:
    """Run the node: receive studies, triage them when complete, send the results."""
    _setup_logging(verbose)
    settings = _settings(config, port=port, bind_address=bind_address)
    from flows.node.service import TriageService
    from flows.node.startup import NodeStartError
    from flows.runtime import Runtime

    service = TriageService(Runtime.create(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        host, bound_port = service.start()
    except NodeStartError as error:
        typer.echo(f"fracture-triage cannot start: {error}", err=True)
        service.stop()
        raise typer.Exit(2) from None
    console.print(f"[green]{settings.ae_title}[/green] listening on {host}:{bound_port}")
    try:
        stop.wait()
    finally:
        service.stop()


@app.command()
def demo(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port for the demo node (0: any free port).")] = 0,
    samples_dir: Annotated[Path, typer.Option(help="Where sample studies are written.")] = Path(
        "var/samples"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 600,
) -> None:
    """Build the demo model if missing, send sample studies to a node over DICOM, show results."""
    _setup_logging()
    settings = _settings(config, port=port, study_stable_seconds=2.0)
    _ensure_bundle(settings.model_bundle_dir)

    from db.models import Study, StudyStatus
    from dicom_node.delivery.dimse import send_files
    from flows.node.service import TriageService
    from flows.runtime import Runtime
    from models.training.phantoms import write_sample_studies

    study_dirs = write_sample_studies(samples_dir)
    runtime = Runtime.create(settings)
    with TriageService(runtime) as service:
        host, bound_port = service.address or ("127.0.0.1", settings.port)
        node = Destination(name="demo-node", ae_title=settings.ae_title, host=host, port=bound_port)
        study_uids = [d.name for d in study_dirs]
        for study_dir in study_dirs:
            files = sorted(study_dir.glob("*.dcm"))
            outcomes = send_files(files, node, "DEMO_MODALITY")
            sent = sum(o.success for o in outcomes)
            console.print(f"sent {sent}/{len(files)} instances of study {study_dir.name}")

        finished = {StudyStatus.TRIAGED, StudyStatus.FAILED, StudyStatus.NOT_TRIAGED}
        deadline = time.monotonic() + timeout
        with console.status("waiting for the triage results..."):
            while time.monotonic() < deadline:
                with runtime.sessions() as session:
                    statuses = session.execute(
                        select(Study.status).where(Study.study_instance_uid.in_(study_uids))
                    ).scalars()
                    done = sum(status in finished for status in statuses)
                if done == len(study_uids):
                    break
                time.sleep(0.5)
    _print_results(runtime, study_uids)


@app.command("run-study")
def run_study(
    study_instance_uid: str,
    config: ConfigOption = None,
) -> None:
    """Triage one stored study now (again, if it was triaged before)."""
    _setup_logging()
    settings = _settings(config)
    from db.migrate import upgrade
    from flows.prefect_env import flow_run_settings
    from flows.runtime import Runtime, install_runtime
    from flows.triage.flow import triage_study

    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    install_runtime(runtime)
    with flow_run_settings(settings.prefect_flow_heartbeat):
        summary = triage_study(study_instance_uid, force=True)
    _print_results(runtime, [summary.study_instance_uid])


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Queue, running and failed studies, the outbox, model versions in use, latest results."""
    settings = _settings(config)
    from db.repositories import node_status
    from flows.runtime import Runtime

    runtime = Runtime.create(settings)
    with runtime.sessions() as session:
        report = node_status(session)
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    for title, key in (
        ("Studies", "studies"),
        ("Outbox", "deliveries"),
        ("Model versions in use", "models"),
    ):
        table = Table("what", "count", title=title)
        for name, count in report[key].items():
            table.add_row(str(name), str(count))
        console.print(table)
    if report["latest"]:
        _print_results(runtime, list(reversed(report["latest"])))


@app.command("build-demo-bundle")
def build_demo_bundle(
    out: Annotated[Path, typer.Option(help="Bundle directory.")] = Path("var/bundles/demo"),
    seed: int = 0,
) -> None:
    """Train the demo bundle on synthetic phantoms (a few minutes on 2 CPU cores)."""
    _setup_logging()
    from models.training.train import train_demo_bundle

    train_demo_bundle(out, seed=seed, progress=True)
    console.print(f"demo bundle written to {out}")


LayoutOption = Annotated[
    str,
    typer.Option("--layout", help="Data layout: mura, csv (path, region, label[, box]), dicom."),
]


def _load_data(data: Path, layout: str, labels: Path | None) -> list:  # type: ignore[type-arg]
    from models.training.datasets import LAYOUTS, DatasetError, load_records

    if layout not in LAYOUTS:
        console.print(f"[red]Unknown layout {layout!r}[/red]; choose one of {', '.join(LAYOUTS)}")
        raise typer.Exit(2)
    try:
        return load_records(data, layout, labels)  # type: ignore[arg-type]
    except DatasetError as error:
        console.print(f"[red]Cannot load {data}:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Data set: MURA folder, CSV file or DICOM folder.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    layout: LayoutOption = "mura",
    labels: Annotated[
        Path | None, typer.Option(help="DICOM layout: labels CSV (default DATA/labels.csv).")
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="mura (DenseNet121 at 320 px, MURA's baseline, for a GPU) or phantom "
            "(a short CPU run on make-phantom-dataset data); the options below override it."
        ),
    ] = "mura",
    architecture: Annotated[
        str | None,
        typer.Option(help="densenet121, densenet-small, efficientnet-b0, efficientnet-b1."),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Model input side in pixels.")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of each stage (default: the preset's).")
    ] = None,
    batch_size: int | None = None,
    num_workers: Annotated[
        int | None, typer.Option(help="Data loader worker processes (GPU runs: 4-8).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when present), cpu or cuda.")] = "auto",
    sensitivity_target: Annotated[
        float | None,
        typer.Option(help="Sensitivity of the 'suspected' (screening) point (default 0.95)."),
    ] = None,
    specificity_target: Annotated[
        float | None,
        typer.Option(help="Specificity of the 'likely' point (default 0.95)."),
    ] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(help="Study probability from its views: mean (MURA's) or max."),
    ] = None,
    max_steps_per_epoch: Annotated[
        int | None, typer.Option(help="Cap each epoch (a quick trial of a configuration).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/training/ checkpoints.")] = False,
    name: str = "fracture-triage",
    version: str = "0.1.0",
    synthetic: Annotated[
        bool | None,
        typer.Option(help="Mark the bundle as trained on phantoms (default: the preset's)."),
    ] = None,
    seed: int = 0,
) -> None:
    """Train a two-stage bundle (region, then per-region fracture) on labelled radiographs."""
    _setup_logging()
    from pydantic import ValidationError

    from models.training.train import PRESETS, preset_config
    from models.training.train import train as train_bundle

    if preset not in PRESETS:
        console.print(f"[red]Unknown preset {preset!r}[/red]; choose one of {', '.join(PRESETS)}")
        raise typer.Exit(2)
    records = _load_data(data, layout, labels)
    chosen = {
        "architecture": architecture,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "trained_on_synthetic_data": synthetic,
        "sensitivity_target": sensitivity_target,
        "specificity_target": specificity_target,
        "study_aggregation": aggregation,
        "max_steps_per_epoch": max_steps_per_epoch,
    }
    options: dict[str, object] = {k: v for k, v in chosen.items() if v is not None}
    options.update(device=device, resume=resume, name=name, version=version, seed=seed)
    options["training_data"] = f"{layout} data set at {data.name}"
    if epochs is not None:
        options.update(region_epochs=epochs, fracture_epochs=epochs, finetune_epochs=epochs)
    try:
        config = preset_config(preset, **options)
    except ValidationError as error:
        console.print(f"[red]Invalid training option:[/red] {error}")
        raise typer.Exit(2) from None
    train_bundle(config, records, out, progress=True)
    console.print(f"bundle written to {out} (model card: {out / 'docs' / 'README.md'})")


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Option(help="Bundle directory to evaluate.")],
    data: Annotated[Path, typer.Option(help="Data set: MURA folder, CSV file or DICOM folder.")],
    out: Annotated[Path, typer.Option(help="Report folder (report.md, PNG figures).")],
    layout: LayoutOption = "mura",
    labels: Annotated[Path | None, typer.Option(help="DICOM layout: labels CSV.")] = None,
    split: Annotated[
        str,
        typer.Option(
            help="test (the patients the training held out, from BUNDLE/training/splits.json) "
            "or all."
        ),
    ] = "test",
    occlusion: Annotated[bool, typer.Option(help="Add occlusion sensitivity.")] = False,
) -> None:
    """Evaluate a bundle: AUROC with CI, operating points, kappa, calibration, ROC, report."""
    _setup_logging()
    from models.training.evaluation import evaluate_bundle

    records = _load_data(data, layout, labels)
    if split == "test":
        splits_file = bundle / "training" / "splits.json"
        if not splits_file.is_file():
            console.print(
                f"[red]No {splits_file}[/red]: the bundle does not record its training split; "
                "pass --split all with data it was not trained on"
            )
            raise typer.Exit(2)
        held_out = set(json.loads(splits_file.read_text())["test"])
        records = [r for r in records if r.patient_id in held_out]
        if not records:
            console.print(f"[red]No image of {data} is in the bundle's test split[/red]")
            raise typer.Exit(2)
    elif split != "all":
        console.print(f"[red]Unknown split {split!r}[/red]; choose test or all")
        raise typer.Exit(2)
    result = evaluate_bundle(
        bundle,
        records,
        out,
        data_description=f"{layout} data set {data.name}, {split} split",
        occlusion=occlusion,
    )
    overall = result.metrics.get("overall", {})
    console.print(
        f"AUROC {overall.get('auroc')} (95% CI {overall.get('auroc_ci')}), region accuracy "
        f"{result.metrics['region_accuracy']}, Grad-CAM box hit rate "
        f"{result.metrics['gradcam_box_hit_rate']}; report: {result.report}"
    )


@app.command("make-phantom-dataset")
def make_phantom_dataset(
    out: Annotated[Path, typer.Option(help="Folder to write the phantom data set into.")],
    layout: LayoutOption = "mura",
    size: Annotated[int, typer.Option(help="Phantom image side in pixels.")] = 128,
    patients: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Patients per class (csv: images per class; mura: train patients per region, "
            "a third as many in valid; dicom: two-view studies per class). Default: a few.",
        ),
    ] = None,
    seed: int = 0,
) -> None:
    """Write a small synthetic data set in the MURA, CSV or DICOM layout (for trying train)."""
    _setup_logging()
    from models.training.datasets import LAYOUTS, write_phantom_dataset

    if layout not in LAYOUTS:
        console.print(f"[red]Unknown layout {layout!r}[/red]; choose one of {', '.join(LAYOUTS)}")
        raise typer.Exit(2)
    path = write_phantom_dataset(out, layout, size, seed, patients)  # type: ignore[arg-type]
    console.print(f"phantom {layout} data set written; pass --data {path} --layout {layout}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the Alembic migrations to the configured database."""
    settings = _settings(config)
    from db.engine import engine_from_settings
    from db.migrate import current_revision, upgrade

    engine = engine_from_settings(settings)
    upgrade(engine)
    console.print(f"database at revision {current_revision(engine)}")


def _ensure_bundle(bundle_dir: Path) -> None:
    if (bundle_dir / "configs" / "metadata.json").is_file():
        return
    console.print(f"no model bundle at {bundle_dir}: training the demo bundle on phantoms")
    from models.training.train import train_demo_bundle

    train_demo_bundle(bundle_dir, progress=True)


def _print_results(runtime: Runtime, study_uids: list[str]) -> None:
    from db.repositories import RunRepository, StudyRepository

    table = Table(title="Triage results")
    for column in ("study", "status", "region", "probability", "decision", "outputs"):
        table.add_column(column, overflow="fold")
    with runtime.sessions() as session:
        for uid in study_uids:
            study = StudyRepository(session).get(uid)
            run = RunRepository(session).latest_for_study(uid)
            result = run.study_result if run else None
            outputs = run.outputs if run else []
            sr = sum(o.kind == "sr" for o in outputs)
            sc = sum(o.kind == "sc" for o in outputs)
            if result is None:
                region = probability = "-"
                decision = run.error if run and run.error else "-"
            elif result.region is None:
                region, probability, decision = "unsupported", "-", "no supported region"
            else:
                region = result.region
                probability = f"{result.fracture_probability:.2f}"
                decision = result.level or "-"
            table.add_row(
                _short(uid),
                str(study.status) if study else "unknown",
                region,
                probability,
                decision,
                f"SR {sr}, SC {sc}" if outputs else "-",
            )
    console.print(table)
    console.print(f"Output files: {runtime.output_dir}/<study UID>/<series UID>/<SOP UID>.dcm")


def _short(uid: str) -> str:
    return uid if len(uid) <= 16 else f"…{uid[-15:]}"


if __name__ == "__main__":
    app()
