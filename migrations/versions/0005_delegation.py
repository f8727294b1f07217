"""Delegated fine-tuning: a job's remote job (provider, remote id, remote status) and the job it re-runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN remote jsonb, ADD COLUMN rerun_of text")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN remote, DROP COLUMN rerun_of")
