"""triage_runs.input_key (results keyed by model identity and source instances);
studies.urgent (the site's priority rule)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("triage_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_triage_runs_input_key"), ["input_key"])


def downgrade() -> None:
    with op.batch_alter_table("triage_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_triage_runs_input_key"))
        batch_op.drop_column("input_key")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("urgent")
