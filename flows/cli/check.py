"""``fracture-triage check``: is this node ready to run? One line per check."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated

import typer

from config import Settings, SettingsError, load_settings
from config.logs import configure_logging
from flows.cli.options import ConfigOption, console
from flows.node.health import (
    CheckFailedError,
    CheckResult,
    check_database,
    check_destination,
    check_servable,
    check_writable_folder,
    run_check,
)


def check(
    config: ConfigOption = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each destination may take to answer.")
    ] = 10.0,
) -> None:
    """Validate the settings, load the model bundle, check the database and the store, and
    C-ECHO (or connect to) each destination. Exit status 1 when any check fails."""
    try:
        settings = load_settings(config)
    except SettingsError as error:
        _print(CheckResult("settings", False, str(error)))
        raise typer.Exit(1) from None
    configure_logging(settings, console_level="ERROR")  # the lines below say what failed
    _print(CheckResult("settings", True, "valid"))
    checks: list[tuple[str, Callable[[], str]]] = [
        ("model bundle", partial(_load_bundle, settings)),
        ("database", partial(_database, settings)),
        ("store", partial(check_writable_folder, settings.store_dir, settings.min_free_disk_bytes)),
        ("outputs", partial(check_writable_folder, settings.output_dir)),
    ]
    checks += [
        (f"destination {d.name}", partial(check_destination, d, settings, timeout))
        for d in settings.destinations
    ]
    failed = 0
    for name, function in checks:
        result = run_check(name, function)
        _print(result)
        failed += not result.ok
    if failed:
        raise typer.Exit(1)


def _print(result: CheckResult) -> None:
    style = "green" if result.ok else "red"
    console.print(f"[{style}]{result.line()}[/{style}]", highlight=False, soft_wrap=True)


def _load_bundle(settings: Settings) -> str:
    from models.runtime.bundle import load_bundle
    from models.runtime.networks import resolve_device

    model = load_bundle(settings.model_bundle_dir, device=resolve_device(settings.model_device))
    metadata = model.metadata
    check_servable(metadata, settings.model_bundle_dir)
    synthetic = ", trained on synthetic data" if metadata.trained_on_synthetic_data else ""
    return f"{metadata.name} {metadata.version} loaded from {settings.model_bundle_dir}{synthetic}"


def _database(settings: Settings) -> str:
    from db.engine import engine_from_settings

    path = settings.sqlite_path
    if path is not None and not path.exists():
        raise CheckFailedError(f"no database at {path} (run fracture-triage db upgrade)")
    engine = engine_from_settings(settings)
    try:
        return check_database(engine)
    finally:
        engine.dispose()
