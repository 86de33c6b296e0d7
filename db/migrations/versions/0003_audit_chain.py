"""audit_events: append-only (triggers, application role) and hash-chained; export cursors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Existing events are chained in id order before the triggers are created.

Careful in later migrations: on SQLite, ``batch_alter_table("audit_events")``
rebuilds the table and drops its triggers; such a migration must recreate them
(:func:`create_sqlite_triggers`). On PostgreSQL a migration that adds a table
calls :func:`db.roles.grant_app_privileges` so the application role can use it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from db.roles import app_role_name, ensure_app_role, grant_app_privileges, revoke_app_privileges

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64

SQLITE_TRIGGERS = {
    "audit_events_no_update": "UPDATE",
    "audit_events_no_delete": "DELETE",
}

PG_FUNCTION = "audit_events_reject_change"
PG_ROW_TRIGGER = "audit_events_append_only"
PG_TRUNCATE_TRIGGER = "audit_events_no_truncate"


def create_sqlite_triggers() -> None:
    for name, operation in SQLITE_TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: {operation} rejected'); END"
        )


def create_postgresql_triggers() -> None:
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only: % rejected', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {PG_ROW_TRIGGER} BEFORE UPDATE OR DELETE ON audit_events "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()"
    )
    op.execute(
        f"CREATE TRIGGER {PG_TRUNCATE_TRIGGER} BEFORE TRUNCATE ON audit_events "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()"
    )


def _chain_existing_events() -> None:
    # The canonical form lives with the code that writes and verifies it. Only this
    # revision's columns are read (not the ORM model, which later revisions may extend).
    from db.audit import event_hash_of
    from db.models import UTCDateTime

    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id", sa.Integer),
        sa.column("occurred_at", UTCDateTime()),
        sa.column("event_type", sa.String),
        sa.column("outcome", sa.String),
        sa.column("actor", sa.String),
        sa.column("study_instance_uid", sa.String),
        sa.column("sop_instance_uid", sa.String),
        sa.column("detail", sa.JSON),
        sa.column("previous_hash", sa.String),
        sa.column("event_hash", sa.String),
    )
    previous = GENESIS_HASH
    rows = bind.execute(sa.select(events).order_by(events.c.id)).all()
    for row in rows:
        event_hash = event_hash_of(row, previous_hash=previous)  # type: ignore[arg-type]
        bind.execute(
            events.update()
            .where(events.c.id == row.id)
            .values(previous_hash=previous, event_hash=event_hash)
        )
        previous = event_hash


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("event_hash", sa.String(length=64), nullable=True))

    _chain_existing_events()

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("previous_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("event_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_audit_events_previous_hash"), ["previous_hash"]
        )

    op.create_table(
        "audit_export_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_export_cursors")),
    )

    if dialect == "sqlite":
        create_sqlite_triggers()
    elif dialect == "postgresql":
        create_postgresql_triggers()
        role = app_role_name(context.config.attributes.get("app_role"))
        ensure_app_role(op.get_bind(), role)
        grant_app_privileges(op.get_bind(), role)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        revoke_app_privileges(
            op.get_bind(), app_role_name(context.config.attributes.get("app_role"))
        )
        op.execute(f"DROP TRIGGER IF EXISTS {PG_TRUNCATE_TRIGGER} ON audit_events")
        op.execute(f"DROP TRIGGER IF EXISTS {PG_ROW_TRIGGER} ON audit_events")
        op.execute(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")

    op.drop_table("audit_export_cursors")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_events_previous_hash"), type_="unique")
        batch_op.drop_column("event_hash")
        batch_op.drop_column("previous_hash")
