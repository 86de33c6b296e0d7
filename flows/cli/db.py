"""``fracture-triage db``: the database's schema."""

from __future__ import annotations

import typer

from flows.cli.options import ConfigOption, console, settings_for

db_app = typer.Typer(help="Audit database maintenance.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(config: ConfigOption = None) -> None:
    """Apply the Alembic migrations to the configured database."""
    settings = settings_for(config)
    from db.engine import engine_from_settings
    from db.migrate import current_revision
    from db.migrate import upgrade as upgrade_to_head

    engine = engine_from_settings(settings)
    try:
        upgrade_to_head(engine)
        console.print(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()
