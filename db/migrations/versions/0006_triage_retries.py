"""Failed triage runs are retried with backoff (studies.triage_attempts, next_attempt_at);
the append-only triggers of audit_events fire in every replication role (ENABLE ALWAYS)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

A trigger enabled the default way does not fire when a session sets
``session_replication_role = replica``, which a superuser may do; ENABLE ALWAYS
makes it fire then too, so UPDATE, DELETE and TRUNCATE are refused in every role.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PG_TRIGGERS = ("audit_events_append_only", "audit_events_no_truncate")


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("triage_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for trigger in _PG_TRIGGERS:
            op.execute(f"ALTER TABLE audit_events ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in _PG_TRIGGERS:
            op.execute(f"ALTER TABLE audit_events ENABLE TRIGGER {trigger}")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("triage_attempts")
