"""Audit and time travel: the registry's events by type in log order (GET /api/registry?as_of= folds them
without reading the live tables; the webhook deliverer finds a webhook's events by type), and events by time
(as_of and since/until given as times). Webhooks: the read model of each project's webhooks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX events_type_position_idx ON events (type, global_position)")
    op.execute("CREATE INDEX events_recorded_at_idx ON events (recorded_at)")
    op.execute("""
        CREATE TABLE webhooks (
          id text PRIMARY KEY,
          project text NOT NULL,
          url text NOT NULL,
          event_types jsonb NOT NULL,
          created_at bigint NOT NULL,
          created_position bigint NOT NULL,  -- events after this one are delivered
          deleted_at bigint,
          delivered_position bigint,
          delivered INTEGER NOT NULL DEFAULT 0,
          failed_attempts INTEGER NOT NULL DEFAULT 0,
          last_error text,
          seq bigint NOT NULL
        );
        CREATE INDEX webhooks_project_idx ON webhooks (project, seq);
        INSERT INTO projection_checkpoints (name, position) VALUES ('webhooks', 0) ON CONFLICT DO NOTHING;
    """)


def downgrade() -> None:
    op.execute("DROP TABLE webhooks; DELETE FROM projection_checkpoints WHERE name = 'webhooks'")
    op.execute("DROP INDEX events_recorded_at_idx")
    op.execute("DROP INDEX events_type_position_idx")
