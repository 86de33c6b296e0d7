"""Not-assessed results (gate and reason per study and image, no operating points then);
HL7 outputs without SOP Class and Series UIDs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _not_assessed_columns(batch_op: BatchOperations) -> None:
    batch_op.add_column(sa.Column("not_assessed_gate", sa.String(length=16), nullable=True))
    batch_op.add_column(sa.Column("not_assessed_reason", sa.Text(), nullable=True))


def upgrade() -> None:
    with op.batch_alter_table("study_results", schema=None) as batch_op:
        _not_assessed_columns(batch_op)
        batch_op.alter_column("threshold_suspected", existing_type=sa.Float(), nullable=True)
        batch_op.alter_column("threshold_likely", existing_type=sa.Float(), nullable=True)
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        _not_assessed_columns(batch_op)
        batch_op.alter_column("region_probability", existing_type=sa.Float(), nullable=True)
    with op.batch_alter_table("output_objects", schema=None) as batch_op:
        batch_op.alter_column("sop_class_uid", existing_type=sa.String(64), nullable=True)
        batch_op.alter_column("series_instance_uid", existing_type=sa.String(64), nullable=True)
    # HL7 messages were stored with empty strings for what they do not have.
    op.execute(
        "UPDATE output_objects SET sop_class_uid = NULL, series_instance_uid = NULL "
        "WHERE kind = 'hl7'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE output_objects SET sop_class_uid = '', series_instance_uid = '' WHERE kind = 'hl7'"
    )
    with op.batch_alter_table("output_objects", schema=None) as batch_op:
        batch_op.alter_column("series_instance_uid", existing_type=sa.String(64), nullable=False)
        batch_op.alter_column("sop_class_uid", existing_type=sa.String(64), nullable=False)
    op.execute("UPDATE image_results SET region_probability = 0 WHERE region_probability IS NULL")
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        batch_op.alter_column("region_probability", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("not_assessed_reason")
        batch_op.drop_column("not_assessed_gate")
    op.execute(
        "UPDATE study_results SET threshold_suspected = 1, threshold_likely = 1 "
        "WHERE threshold_suspected IS NULL OR threshold_likely IS NULL"
    )
    with op.batch_alter_table("study_results", schema=None) as batch_op:
        batch_op.alter_column("threshold_likely", existing_type=sa.Float(), nullable=False)
        batch_op.alter_column("threshold_suspected", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("not_assessed_reason")
        batch_op.drop_column("not_assessed_gate")
