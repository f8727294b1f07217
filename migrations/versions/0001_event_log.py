"""Event log, idempotency, blobs, leases and the first read models (files, jobs, keys, models).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# One round trip per append: the function takes the table lock, checks expected versions, inserts,
# records the command for idempotency and notifies, all in the caller's transaction.
APPEND_FUNCTION = r"""
CREATE FUNCTION tunelog_append(p_batch jsonb, p_command_id text, p_request_hash text, p_response jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  s jsonb; e jsonb; cur int; v int; pos bigint; positions bigint[] := '{}';
  prior record;
BEGIN
  -- Why a table lock: global_position comes from a sequence, and two concurrent transactions could
  -- commit out of sequence order; a reader that saw position N+1 before N committed would skip N
  -- forever. EXCLUSIVE mode serialises writers only (plain SELECTs take ACCESS SHARE and go on),
  -- so positions become visible strictly in order. This is what the eventsourcing library does.
  LOCK TABLE events IN EXCLUSIVE MODE;
  IF p_command_id IS NOT NULL THEN
    SELECT request_hash, response INTO prior FROM commands WHERE command_id = p_command_id;
    IF FOUND THEN
      IF prior.request_hash IS DISTINCT FROM p_request_hash THEN
        RAISE EXCEPTION USING ERRCODE = 'TL422',
          MESSAGE = 'this Idempotency-Key was already used with a different request';
      END IF;
      RETURN jsonb_build_object('duplicate', true, 'response', prior.response, 'positions', '[]'::jsonb);
    END IF;
  END IF;
  FOR s IN SELECT value FROM jsonb_array_elements(p_batch) LOOP
    SELECT coalesce(max(stream_version), 0) INTO cur FROM events WHERE stream_id = s->>'stream';
    IF jsonb_typeof(s->'expected') = 'number' AND (s->>'expected')::int <> cur THEN
      RAISE EXCEPTION USING ERRCODE = 'TL409',
        MESSAGE = format('stream %s is at version %s, expected %s', s->>'stream', cur, s->>'expected'),
        DETAIL = json_build_object('stream', s->>'stream', 'actual', cur, 'expected', (s->>'expected')::int)::text;
    END IF;
    v := cur;
    FOR e IN SELECT value FROM jsonb_array_elements(s->'events') LOOP
      v := v + 1;
      INSERT INTO events (stream_id, stream_version, type, data, metadata)
      VALUES (s->>'stream', v, e->>'type', coalesce(e->'data', '{}'::jsonb), coalesce(e->'metadata', '{}'::jsonb))
      RETURNING global_position INTO pos;
      positions := positions || pos;
    END LOOP;
  END LOOP;
  IF p_command_id IS NOT NULL THEN
    INSERT INTO commands (command_id, request_hash, response, last_position)
    VALUES (p_command_id, p_request_hash, p_response, pos);
  END IF;
  IF pos IS NOT NULL THEN
    PERFORM pg_notify('tunelog_events', pos::text);
  END IF;
  RETURN jsonb_build_object('duplicate', false, 'positions', to_jsonb(positions));
END
$fn$;
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE events (
          global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          stream_id text NOT NULL,
          stream_version integer NOT NULL CHECK (stream_version > 0),
          type text NOT NULL,
          data jsonb NOT NULL,
          metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
          recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
          -- optimistic concurrency: two writers expecting the same version cannot both append
          CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
        );
        COMMENT ON TABLE events IS 'Append-only. The application never updates or deletes rows.';

        -- Write side: the first response to each Idempotency-Key, stored in the append's transaction.
        CREATE TABLE commands (
          command_id text PRIMARY KEY,
          request_hash text,
          response jsonb,
          last_position bigint,
          created_at timestamptz NOT NULL DEFAULT now()
        );

        -- Write side: uploaded file bytes, content-addressed (events carry the sha256, not the bytes).
        CREATE TABLE blobs (
          sha256 text PRIMARY KEY,
          content bytea NOT NULL,
          created_at timestamptz NOT NULL DEFAULT now()
        );

        -- Operational: a running attempt's heartbeat. Not derived from the log, never replayed.
        CREATE TABLE leases (
          job_id text PRIMARY KEY,
          attempt integer NOT NULL,
          worker text NOT NULL,
          expires_at timestamptz NOT NULL
        );

        CREATE TABLE projection_checkpoints (
          name text PRIMARY KEY,
          position bigint NOT NULL DEFAULT 0
        );

        CREATE TABLE files (
          id text PRIMARY KEY,
          project text NOT NULL,
          filename text NOT NULL,
          purpose text NOT NULL,
          bytes bigint NOT NULL,
          sha256 text NOT NULL,
          created_at bigint NOT NULL,
          stats jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX files_project_idx ON files (project, created_at);

        CREATE TABLE jobs (
          id text PRIMARY KEY,
          project text NOT NULL,
          model text NOT NULL,
          backend text NOT NULL,
          status text NOT NULL,
          training_file text NOT NULL,
          validation_file text,
          hyperparameters jsonb NOT NULL,
          method jsonb NOT NULL,
          suffix text,
          seed bigint,
          metadata jsonb,
          created_at bigint NOT NULL,
          started_at bigint,
          finished_at bigint,
          fine_tuned_model text,
          trained_tokens bigint,
          error jsonb,
          attempt integer NOT NULL DEFAULT 1,
          queue text NOT NULL,
          cancel_requested boolean NOT NULL DEFAULT false,
          version integer NOT NULL,
          seq bigint NOT NULL
        );
        CREATE INDEX jobs_project_idx ON jobs (project, seq);
        CREATE INDEX jobs_status_idx ON jobs (status);

        CREATE TABLE job_checkpoints (
          id text PRIMARY KEY,
          job_id text NOT NULL,
          project text NOT NULL,
          step integer NOT NULL,
          metrics jsonb NOT NULL,
          fine_tuned_model_checkpoint text NOT NULL,
          path text NOT NULL,
          created_at bigint NOT NULL,
          seq bigint NOT NULL
        );
        CREATE INDEX job_checkpoints_job_idx ON job_checkpoints (job_id, seq);

        CREATE TABLE api_keys (
          id text PRIMARY KEY,
          key_hash text NOT NULL UNIQUE,
          name text NOT NULL,
          role text NOT NULL,
          project text NOT NULL,
          created_at bigint NOT NULL,
          revoked boolean NOT NULL DEFAULT false
        );

        CREATE TABLE models (
          id text PRIMARY KEY,
          project text NOT NULL,
          base_model text NOT NULL,
          backend text NOT NULL,
          job_id text,
          artifact_path text,
          created_at bigint NOT NULL,
          lineage jsonb NOT NULL,
          seq bigint NOT NULL
        );
        CREATE INDEX models_project_idx ON models (project, seq);
        """
    )
    op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION IF EXISTS tunelog_append(jsonb, text, text, jsonb);
        DROP TABLE IF EXISTS models, api_keys, job_checkpoints, jobs, files, projection_checkpoints,
          leases, blobs, commands, events;
        """
    )
