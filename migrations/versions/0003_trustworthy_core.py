"""Trustworthy core: parked (dead-letter) events per projection, process heartbeats, stream ownership.

- `projection_failures`: a projection handler that fails on an event is retried a bounded number of
  times (`attempts`), then the event is parked (`parked = true`) and that projection moves on; the
  other projections, the API's writes and the dispatcher never wait on it. Rebuilt by replay like any
  read model (a rebuild that still fails parks the event again).
- `heartbeats`: each long-lived process (projector, dispatcher, workers, API) writes its row every few
  seconds; /healthz reports every part from it. Not a read model: never rebuilt, only overwritten.
- `stream_projects`: which project each stream belongs to (from the first event naming a project), so
  a project admin's audit log shows its own project's streams only. A read model.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projection_failures (
          name text NOT NULL,
          global_position bigint NOT NULL,
          stream_id text NOT NULL,
          type text NOT NULL,
          attempts integer NOT NULL,
          error text NOT NULL,
          parked boolean NOT NULL DEFAULT false,
          first_failed_at timestamptz NOT NULL DEFAULT now(),
          last_failed_at timestamptz NOT NULL DEFAULT now(),
          PRIMARY KEY (name, global_position)
        );
        COMMENT ON TABLE projection_failures IS
          'Events a projection could not apply: retried (attempts), then parked so the projection moves on.';

        CREATE TABLE heartbeats (
          process text PRIMARY KEY,
          kind text NOT NULL,
          host text NOT NULL,
          pid integer NOT NULL,
          started_at timestamptz NOT NULL,
          seen_at timestamptz NOT NULL,
          info jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX heartbeats_kind_idx ON heartbeats (kind, seen_at);

        CREATE TABLE stream_projects (
          stream_id text PRIMARY KEY,
          project text NOT NULL
        );
        CREATE INDEX stream_projects_project_idx ON stream_projects (project);

        -- a rebuilt stream_projects starts from position 0 like every read model
        INSERT INTO projection_checkpoints (name, position) VALUES ('stream_projects', 0)
          ON CONFLICT (name) DO NOTHING;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS stream_projects, heartbeats, projection_failures; "
               "DELETE FROM projection_checkpoints WHERE name = 'stream_projects'")
