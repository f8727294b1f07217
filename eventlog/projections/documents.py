from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


def decode_vector(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def encode_vector(v) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


class DocumentsProjection:
    """Documents and the pgvector retrieval table (chunks with an HNSW cosine index)."""

    name = "documents"
    types = frozenset({"DocumentAdded", "ChunksEmbedded", "DocumentIndexed", "DocumentFailed", "DocumentDeleted"})
    tables = ("documents", "chunks")
    build_indexes = ("chunks_document_idx",)  # a deletion finds its chunks by it, in a rebuild too

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        registered = False  # pool connections have the adapters already; a bare connection may not
        for e in events:
            d = e.data
            if e.type == "DocumentAdded":
                conn.execute(
                    "INSERT INTO documents (id, project, title, filename, media_type, bytes, sha256, text_sha256, "
                    "status, created_at, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'processing', %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["project"], d["title"], d.get("filename"), d["media_type"], d["bytes"], d["sha256"],
                     d["text_sha256"], d["created_at"], e.global_position))
            elif e.type == "ChunksEmbedded":
                if not registered:
                    register_vector(conn)
                    registered = True
                row = conn.execute("SELECT project FROM documents WHERE id = %s", (d["id"],)).fetchone()
                if row is None:
                    continue
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO chunks (id, document_id, project, idx, text, char_start, char_end, embedding) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                        [(f"{d['id']}:{c['idx']}", d["id"], row["project"], c["idx"], c["text"], c["start"], c["end"],
                          decode_vector(c["vector"])) for c in d["chunks"]])
            elif e.type == "DocumentIndexed":
                conn.execute("UPDATE documents SET status = 'indexed', n_chunks = %s, indexed_at = %s WHERE id = %s",
                             (d["n_chunks"], d["at"], d["id"]))
            elif e.type == "DocumentFailed":
                conn.execute("UPDATE documents SET status = 'failed', error = %s WHERE id = %s",
                             (Jsonb(d["error"]), d["id"]))
            elif e.type == "DocumentDeleted":
                conn.execute("DELETE FROM chunks WHERE document_id = %s", (d["id"],))
                conn.execute("DELETE FROM documents WHERE id = %s", (d["id"],))
