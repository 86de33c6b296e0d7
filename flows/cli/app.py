"""The ``fracture-triage`` command line: the commands grouped by job, assembled here.

- node (flows.cli.node, .status, .check): serve, demo, run-study, status, check
- admin (flows.cli.admin): reprocess, retry-outbox, purge, worker
- audit (flows.cli.audit); models (flows.cli.models); db (flows.cli.db)

:func:`main` is the entry point: an operator's mistake (a bad option, an unreadable
config, a database that cannot be reached) ends in one line and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

from flows.cli import admin, check, models, node, status
from flows.cli.audit import audit_app
from flows.cli.db import db_app
from flows.cli.options import PROGRAM

app = typer.Typer(
    help="AI fracture triage node for musculoskeletal radiographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug's traceback plain, and never with local values
)
for command, name in (
    (node.serve, "serve"),
    (node.demo, "demo"),
    (node.run_study, "run-study"),
    (status.status, "status"),
    (check.check, "check"),
    (admin.reprocess, "reprocess"),
    (admin.retry_outbox, "retry-outbox"),
    (admin.purge, "purge"),
    (admin.worker, "worker"),
    (models.train, "train"),
    (models.evaluate, "evaluate"),
    (models.build_demo_bundle, "build-demo-bundle"),
    (models.make_phantom_dataset, "make-phantom-dataset"),
):
    app.command(name)(command)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


def _version() -> str:
    try:
        return package_version("fracture-triage")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROGRAM} {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """AI fracture triage node for musculoskeletal radiographs."""


def main(argv: list[str] | None = None) -> None:
    """Run the command line; mistakes end in one line on standard error."""
    from sqlalchemy.exc import OperationalError

    from flows.node.health import error_text

    try:
        code = app(args=argv, prog_name=PROGRAM, standalone_mode=False)
    except typer.TyperException as error:  # a usage error: bad or missing option, ...
        code = error.exit_code
        context = getattr(error, "ctx", None)
        message = error.format_message()
        if message.strip():  # empty: no arguments at all, and Typer has printed the help
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            typer.echo(f"{PROGRAM}: {message}{hint}", err=True)
    except typer.Abort:
        typer.echo(f"{PROGRAM}: interrupted", err=True)
        code = 130
    except OperationalError as error:
        typer.echo(f"{PROGRAM}: the database cannot be reached: {error_text(error)}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
