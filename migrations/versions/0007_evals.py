"""Evaluations (OpenAI's Evals shapes): evals, their runs and each run's graded items; the teacher's review of
suggested corrections (rejected, who reviewed and when).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE evals (
          id text PRIMARY KEY,
          project text NOT NULL,
          name text NOT NULL,
          data_source_config jsonb NOT NULL,
          testing_criteria jsonb NOT NULL,
          metadata jsonb,
          created_at bigint NOT NULL,
          deleted_at bigint,
          seq bigint NOT NULL
        );
        CREATE INDEX evals_project_idx ON evals (project, seq);

        CREATE TABLE eval_runs (
          id text PRIMARY KEY,
          eval_id text NOT NULL,
          project text NOT NULL,
          name text NOT NULL,
          model text,                -- the model id the samples came from (an alias resolved at creation)
          requested_model text,      -- as asked (an alias stays an alias here)
          spec_sha256 text,          -- items + template + sampling + judges: the gate compares equal specs only
          data_source jsonb NOT NULL,
          metadata jsonb,
          status text NOT NULL,      -- queued | in_progress | completed | failed | canceled
          attempt integer NOT NULL DEFAULT 1,
          cancel_requested boolean NOT NULL DEFAULT false,
          total integer NOT NULL DEFAULT 0,
          passed integer NOT NULL DEFAULT 0,
          failed integer NOT NULL DEFAULT 0,
          errored integer NOT NULL DEFAULT 0,
          per_criteria jsonb NOT NULL DEFAULT '{}'::jsonb,  -- name -> {passed, failed}
          usage jsonb NOT NULL DEFAULT '{}'::jsonb,         -- model -> {invocation_count, prompt_tokens, ...}
          error jsonb,
          created_at bigint NOT NULL,
          started_at bigint,
          finished_at bigint,
          seq bigint NOT NULL
        );
        CREATE INDEX eval_runs_eval_idx ON eval_runs (eval_id, seq);
        CREATE INDEX eval_runs_model_idx ON eval_runs (project, eval_id, model, seq);
        CREATE INDEX eval_runs_open_idx ON eval_runs (status) WHERE status IN ('queued', 'in_progress');

        CREATE TABLE eval_output_items (
          id text PRIMARY KEY,
          run_id text NOT NULL,
          eval_id text NOT NULL,
          project text NOT NULL,
          datasource_item_id integer NOT NULL,
          datasource_item jsonb NOT NULL,
          results jsonb NOT NULL,
          sample jsonb NOT NULL,
          status text NOT NULL,       -- pass | fail | error
          created_at bigint NOT NULL,
          seq bigint NOT NULL,
          UNIQUE (run_id, datasource_item_id)
        );

        ALTER TABLE chat_feedback ADD COLUMN rejected boolean NOT NULL DEFAULT false,
                                  ADD COLUMN reviewed_by text,
                                  ADD COLUMN reviewed_at bigint,
                                  ADD COLUMN review_reason text;
        INSERT INTO projection_checkpoints (name, position) VALUES ('evals', 0) ON CONFLICT DO NOTHING;
    """)
    # Decisions made before this version, as the chat projection records them now (a replay gives the same rows):
    # a correction approved as given was reviewed by its author; else the latest FeedbackApproved says who.
    op.execute("""
        UPDATE chat_feedback SET reviewed_by = actor, reviewed_at = created_at WHERE approved;
        UPDATE chat_feedback f SET reviewed_by = a.data ->> 'actor', reviewed_at = (a.data ->> 'at')::bigint
          FROM (SELECT DISTINCT ON (data ->> 'id') data FROM events WHERE type = 'FeedbackApproved'
                ORDER BY data ->> 'id', global_position DESC) a
         WHERE f.id = a.data ->> 'id';
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE chat_feedback DROP COLUMN rejected, DROP COLUMN reviewed_by, DROP COLUMN reviewed_at,
                                  DROP COLUMN review_reason;
        DROP TABLE eval_output_items, eval_runs, evals;
        DELETE FROM projection_checkpoints WHERE name = 'evals';
    """)
