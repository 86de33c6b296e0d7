"""Engine and session factory: created once per process, the caller owns each session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for a plain ``postgresql://`` URL (the one we install)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def engine_from_settings(settings: Settings, **kwargs: Any) -> Engine:
    """The process's engine for the configured database, with its password if one is set."""
    password = settings.database_password
    return make_engine(
        settings.database_url,
        password=password.get_secret_value() if password is not None else None,
        **kwargs,
    )


def make_engine(url: str, password: str | None = None, **kwargs: Any) -> Engine:
    """Create the process's engine for ``url`` (SQLite file or PostgreSQL).

    ``password`` (from a secret) replaces any password in the URL; SQLAlchemy keeps it
    out of the engine's repr and its log lines.
    """
    parsed = make_url(normalise_database_url(url))
    if password is not None:
        parsed = parsed.set(password=password)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            path = Path(database)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: owner-only
            if not path.exists():
                # Owner-only from the start: the audit DB holds study UIDs.
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (CLI, watcher) run beside the SCP's writes; busy_timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
