"""What every command shares: the options, loading the settings, logging, failing in one line.

A command module declares its parameters with the options here and starts with
:func:`settings_for` (or :func:`load` for commands that log nothing); it never defines
its own ``--config``, ``--json`` or settings loading.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from config import Settings, SettingsError, load_settings
from config.logs import configure_logging

PROGRAM = "fracture-triage"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $FRACTURE_TRIAGE_CONFIG).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")
]

#: Tables and results go to standard output; a pipe gets wide lines, never folded UIDs.
console = Console(width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one line on standard error and a non-zero exit status."""
    typer.echo(f"{PROGRAM}: {message}", err=True)
    raise typer.Exit(code)


def load(config: Path | None, **overrides: object) -> Settings:
    """The settings (file, environment, ``overrides`` that are not None), or fail."""
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        fail(f"invalid settings: {error}")


def settings_for(
    config: Path | None,
    *,
    console_level: str | None = None,
    log_file: Path | None = None,
    **overrides: object,
) -> Settings:
    """The settings, with this process's logging set up from them."""
    settings = load(config, **overrides)
    configure_logging(settings, console_level=console_level, log_file=log_file)
    return settings


def emit(result: object, as_json: bool, title: str) -> None:
    """A result as JSON (a dataclass or a mapping) or as a two-column table."""
    values = asdict(result) if is_dataclass(result) and not isinstance(result, type) else result
    if as_json:
        typer.echo(json.dumps(values, default=str))
        return
    table = Table(title=title)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in dict(values).items():  # type: ignore[call-overload]
        table.add_row(str(key), str(value))
    console.print(table)
