"""A flagged view's fracture type from a bundle's type head (image_results.fracture_type,
fracture_type_probability)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fracture_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("fracture_type_probability", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        batch_op.drop_column("fracture_type_probability")
        batch_op.drop_column("fracture_type")
