"""Local training at production grade: pause/resume, estimated finish, checkpoint rotation, model
export and deletion.

- `jobs`: `estimated_finish` (from measured step times), `pause_requested`, `lost_attempts` (workers
  lost so far: the retry limit counts these, not pauses and resumes, which also start new attempts).
- `models`: `deleted_at` (the model is gone from lists and chat; its history stays in the log) and
  `exports` (merged safetensors / GGUF exports: status and paths).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs ADD COLUMN estimated_finish bigint,
          ADD COLUMN pause_requested boolean NOT NULL DEFAULT false,
          ADD COLUMN lost_attempts integer NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN deleted_at bigint,
          ADD COLUMN exports jsonb NOT NULL DEFAULT '[]'::jsonb;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE jobs DROP COLUMN estimated_finish, DROP COLUMN pause_requested, DROP COLUMN lost_attempts;
        ALTER TABLE models DROP COLUMN deleted_at, DROP COLUMN exports;
        """
    )
