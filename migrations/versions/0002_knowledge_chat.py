"""Knowledge base (documents, pgvector chunks), aliases, project settings, chat answers and feedback.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE documents (
          id text PRIMARY KEY,
          project text NOT NULL,
          title text NOT NULL,
          filename text,
          media_type text NOT NULL,
          bytes bigint NOT NULL,
          sha256 text NOT NULL,
          text_sha256 text NOT NULL,
          status text NOT NULL,
          n_chunks integer NOT NULL DEFAULT 0,
          error jsonb,
          created_at bigint NOT NULL,
          indexed_at bigint,
          seq bigint NOT NULL
        );
        CREATE INDEX documents_project_idx ON documents (project, seq);

        -- The retrieval table. Vectors come from the log (ChunksEmbedded), so a replay rebuilds it
        -- byte for byte without running the embedding model.
        CREATE TABLE chunks (
          id text PRIMARY KEY,
          document_id text NOT NULL,
          project text NOT NULL,
          idx integer NOT NULL,
          text text NOT NULL,
          char_start integer NOT NULL,
          char_end integer NOT NULL,
          embedding vector(384) NOT NULL
        );
        CREATE INDEX chunks_document_idx ON chunks (document_id, idx);
        CREATE INDEX chunks_project_idx ON chunks (project);
        CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops);

        CREATE TABLE aliases (
          project text NOT NULL,
          alias text NOT NULL,
          model text NOT NULL,
          updated_at bigint NOT NULL,
          PRIMARY KEY (project, alias)
        );

        CREATE TABLE project_settings (
          project text PRIMARY KEY,
          settings jsonb NOT NULL
        );

        CREATE TABLE chat_answers (
          id text PRIMARY KEY,
          project text NOT NULL,
          model text NOT NULL,
          alias text,
          chunk_ids jsonb NOT NULL,
          latency_ms double precision NOT NULL,
          prompt_tokens integer NOT NULL,
          completion_tokens integer NOT NULL,
          messages jsonb,
          answer text,
          created_at bigint NOT NULL,
          seq bigint NOT NULL
        );
        CREATE INDEX chat_answers_project_idx ON chat_answers (project, seq);

        CREATE TABLE chat_feedback (
          id text PRIMARY KEY,
          chat_id text NOT NULL,
          project text NOT NULL,
          rating integer NOT NULL,
          comment text,
          corrected_answer text,
          messages jsonb,
          approved boolean NOT NULL,
          actor text NOT NULL,
          created_at bigint NOT NULL,
          seq bigint NOT NULL
        );
        CREATE INDEX chat_feedback_project_idx ON chat_feedback (project, seq);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS chat_feedback, chat_answers, project_settings, aliases, chunks, documents")
