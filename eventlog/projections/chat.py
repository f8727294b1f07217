from __future__ import annotations

from collections.abc import Sequence

import orjson
import psycopg
from psycopg.types.json import Jsonb

from eventlog.projections.base import insert_many
from eventlog.store import RecordedEvent

_ANSWER_COLUMNS = ("id", "project", "model", "alias", "chunk_ids", "latency_ms", "prompt_tokens", "completion_tokens",
                   "messages", "answer", "created_at", "seq")
_ANSWER_TYPES = ("text", "text", "text", "text", "jsonb", "float8", "int", "int", "jsonb", "text", "bigint", "bigint")


class ChatProjection:
    """Which model answered what (and the feedback on it)."""

    name = "chat"
    types = frozenset({"ChatAnswered", "FeedbackGiven", "FeedbackApproved", "FeedbackRejected"})
    tables = ("chat_answers", "chat_feedback")

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        answers: list[tuple] = []  # answers are most of a busy log: inserted together, before anything after them

        def flush() -> None:
            insert_many(conn, "chat_answers", _ANSWER_COLUMNS, answers, _ANSWER_TYPES, "ON CONFLICT (id) DO NOTHING")
            answers.clear()

        for e in events:
            d = e.data
            if e.type == "ChatAnswered":
                # jsonb columns as JSON text: the bulk insert passes text through (no adapter object per value)
                answers.append((d["id"], d["project"], d["model"], d.get("alias"), _json(d["chunk_ids"]),
                                float(d["latency_ms"]), int(d["prompt_tokens"]), int(d["completion_tokens"]),
                                _json(d["messages"]) if d.get("messages") is not None else None, d.get("answer"),
                                int(d["created_at"]), e.global_position))
                continue
            if e.type in ("FeedbackGiven", "FeedbackApproved", "FeedbackRejected"):
                flush()  # feedback refers to an answer: in log order
            if e.type == "FeedbackGiven":
                # a teacher's own correction is approved as it is given: its author reviewed it
                reviewed = (d["actor"], d["at"]) if d["approved"] else (None, None)
                conn.execute(
                    "INSERT INTO chat_feedback (id, chat_id, project, rating, comment, corrected_answer, messages, "
                    "approved, actor, created_at, seq, reviewed_by, reviewed_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["chat_id"], d["project"], d["rating"], d.get("comment"), d.get("corrected_answer"),
                     Jsonb(d["messages"]) if d.get("messages") is not None else None, d["approved"], d["actor"],
                     d["at"], e.global_position, *reviewed))
            elif e.type == "FeedbackApproved":  # the latest decision wins: an approval undoes a rejection
                conn.execute("UPDATE chat_feedback SET approved = true, rejected = false, reviewed_by = %s, "
                             "reviewed_at = %s, review_reason = NULL WHERE id = %s", (d["actor"], d["at"], d["id"]))
            elif e.type == "FeedbackRejected":
                conn.execute("UPDATE chat_feedback SET rejected = true, approved = false, reviewed_by = %s, "
                             "reviewed_at = %s, review_reason = %s WHERE id = %s",
                             (d["actor"], d["at"], d.get("reason"), d["id"]))
        flush()


def _json(value) -> str:
    return orjson.dumps(value).decode()
