"""The database password: from the environment or a secret file, never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from config import Settings, SettingsError, load_settings
from db.engine import engine_from_settings
from tests.peers import scratch_postgres_database

SECRET = "S3cret-Pw-7731"


def test_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    secret_file = tmp_path / "db_password"
    secret_file.write_text(SECRET + "\n")  # secret files usually end with a newline
    settings = load_settings(
        None,
        database_url="postgresql://node@127.0.0.1/ft",
        database_password_file=secret_file,
    )
    assert settings.database_password is not None
    assert settings.database_password.get_secret_value() == SECRET
    for shown in (repr(settings), str(settings), str(settings.model_dump())):
        assert SECRET not in shown


def test_password_in_the_url_stays_out_of_reprs_and_errors() -> None:
    settings = load_settings(None, database_url=f"postgresql://node:{SECRET}@127.0.0.1/ft")
    assert SECRET not in repr(settings)
    # A common typo (postgres://) must not echo the password back to the console.
    with pytest.raises(SettingsError) as error:
        load_settings(None, database_url=f"postgres://node:{SECRET}@db/ft")
    assert "database_url" in str(error.value)
    assert SECRET not in str(error.value)
    assert "node:***@db/ft" in str(error.value)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "cannot be read"),
        ("empty", "is empty"),
        ("both", "not both"),
    ],
)
def test_bad_password_settings_are_refused(tmp_path: Path, setup: str, message: str) -> None:
    secret_file = tmp_path / "db_password"
    if setup != "missing":
        secret_file.write_text("" if setup == "empty" else SECRET)
    extra = {"database_password": SECRET} if setup == "both" else {}
    with pytest.raises(SettingsError, match=message) as error:
        load_settings(None, database_password_file=secret_file, **extra)
    assert SECRET not in str(error.value)


@pytest.mark.peers
def test_engine_uses_the_secret_and_logs_none_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "db_password"
    secret_file.write_text(SECRET)
    with scratch_postgres_database() as url:  # trust authentication: any password is accepted
        settings = load_settings(None, database_url=url, database_password_file=secret_file)
        _connect_and_check(settings, caplog)


def _connect_and_check(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    engine = engine_from_settings(settings, echo=True)
    try:
        assert engine.url.password == SECRET
        assert SECRET not in repr(engine) and SECRET not in str(engine.url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert caplog.records, "the engine logged nothing: the check below would prove nothing"
    assert all(SECRET not in record.getMessage() for record in caplog.records)
