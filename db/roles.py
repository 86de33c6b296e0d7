"""PostgreSQL roles: the application role that may append to the audit trail but not edit it.

A site runs the node under a login role that is a member of the application
role (``fracture_triage_app`` by default) and runs the migrations as the role that
owns the tables::

    -- once, as a superuser or a role with CREATEROLE
    CREATE ROLE fracture_triage_owner LOGIN PASSWORD '...';
    CREATE DATABASE fracture_triage OWNER fracture_triage_owner;
    -- fracture-triage db upgrade, connected as fracture_triage_owner, creates
    -- fracture_triage_app (NOLOGIN) and grants it its privileges
    CREATE ROLE fracture_triage_node LOGIN PASSWORD '...' IN ROLE fracture_triage_app;

and the node's ``database_url`` names ``fracture_triage_node``. The application
role may SELECT and INSERT on ``audit_events`` and nothing more; on every other
table it has SELECT, INSERT, UPDATE and DELETE. The name comes from
``FRACTURE_TRIAGE_DATABASE_APP_ROLE`` (or :func:`db.migrate.upgrade`'s
``app_role``); a migration that adds a table calls :func:`grant_app_privileges`
again.
"""

from __future__ import annotations

import os
import re

from sqlalchemy import Connection, inspect, text

APP_ROLE_ENV = "FRACTURE_TRIAGE_DATABASE_APP_ROLE"
DEFAULT_APP_ROLE = "fracture_triage_app"

#: Tables the application role may only read and append to.
APPEND_ONLY_TABLES = ("audit_events",)
#: Tables it may only read (the schema version; migrations run as the owner).
READ_ONLY_TABLES = ("alembic_version",)

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def app_role_name(configured: str | None = None) -> str:
    """The application role: ``configured``, else the environment, else the default."""
    name = configured or os.environ.get(APP_ROLE_ENV) or DEFAULT_APP_ROLE
    if not _ROLE_NAME.match(name):
        raise ValueError(
            f"application role {name!r} must be a lower-case SQL identifier "
            "(letters, digits, underscore; at most 63)"
        )
    return name


def ensure_app_role(connection: Connection, role: str) -> None:
    """Create ``role`` (NOLOGIN) unless it exists; tolerate a concurrent creator."""
    role = app_role_name(role)
    connection.execute(
        text(
            f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE "{role}" NOLOGIN;
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of the cluster created it at the same moment
            END
            $$
            """
        )
    )


def grant_app_privileges(connection: Connection, role: str) -> None:
    """Grant ``role`` what the node needs on every table of the current schema."""
    role = app_role_name(role)
    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    quoted = f'"{role}"'
    connection.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {quoted}'))
    for table in inspect(connection).get_table_names(schema=schema):
        target = f'"{schema}"."{table}"'
        connection.execute(text(f"REVOKE ALL ON {target} FROM {quoted}"))
        if table in APPEND_ONLY_TABLES:
            privileges = "SELECT, INSERT"
        elif table in READ_ONLY_TABLES:
            privileges = "SELECT"
        else:
            privileges = "SELECT, INSERT, UPDATE, DELETE"
        connection.execute(text(f"GRANT {privileges} ON {target} TO {quoted}"))
    connection.execute(
        text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {quoted}')
    )


def revoke_app_privileges(connection: Connection, role: str) -> None:
    """Undo :func:`grant_app_privileges` (the role itself stays: it is cluster-wide)."""
    role = app_role_name(role)
    exists = connection.execute(
        text("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :role"), {"role": role}
    ).scalar()
    if not exists:
        return
    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    quoted = f'"{role}"'
    for table in inspect(connection).get_table_names(schema=schema):
        connection.execute(text(f'REVOKE ALL ON "{schema}"."{table}" FROM {quoted}'))
    connection.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM {quoted}'))
    connection.execute(text(f'REVOKE USAGE ON SCHEMA "{schema}" FROM {quoted}'))
