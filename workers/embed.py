"""RQ entry point: chunk and embed a document, append its vectors to the log (ids in, events out)."""
from __future__ import annotations

import logging
import time

from domain.errors import ConcurrencyConflict
from domain.events import document_stream
from eventlog.bootstrap import bootstrap
from eventlog.store import NewEvent

log = logging.getLogger("tunelog.embed")
EVENT_CHUNKS = 256  # chunks per ChunksEmbedded event, to keep events a reasonable size


def index_document(document_id: str) -> str:
    from eventlog.embeddings import DIMS, MODEL_NAME, embedder
    from eventlog.projections.documents import encode_vector

    svc = bootstrap(pool_size=2)
    stream = document_stream(document_id)
    events = svc.store.read_stream(stream)
    types = [e.type for e in events]
    if not events or types[0] != "DocumentAdded":
        return "skipped: unknown document"
    if any(t in ("DocumentIndexed", "DocumentDeleted", "DocumentFailed") for t in types):
        return "skipped: already done"
    added = events[0].data
    version = events[-1].stream_version
    meta = {"actor": "worker:embed", "correlation_id": document_id,
            "causation_id": str(events[0].global_position)}
    # Counted before the work: a document whose indexing kills its work horse is failed by the
    # dispatcher after max_attempts tries instead of being re-enqueued forever.
    tries = types.count("DocumentIndexingStarted") + 1
    try:
        svc.store.append(stream, version, [NewEvent("DocumentIndexingStarted", {"id": document_id, "attempt": tries,
                                                                                "at": int(time.time())}, meta)])
    except ConcurrencyConflict:
        return "skipped: the document changed while it waited"
    version += 1
    with svc.pool.connection() as c:
        row = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (added["text_sha256"],)).fetchone()
    t0 = time.perf_counter()
    try:
        text = bytes(row["content"]).decode("utf-8")
        emb = embedder()
        chunks = emb.chunk(text)
        vectors = emb.encode([c.text for c in chunks]) if chunks else []
    except Exception as e:  # noqa: BLE001 - reported on the document
        new = [NewEvent("DocumentFailed", {"id": document_id, "error": {
            "code": "indexing_failed", "message": f"{type(e).__name__}: {e}", "param": None},
            "at": int(time.time())}, meta)]
    else:
        payload = [{"idx": c.idx, "start": c.start, "end": c.end, "text": c.text, "vector": encode_vector(v)}
                   for c, v in zip(chunks, vectors)]
        new = [NewEvent("ChunksEmbedded", {"id": document_id, "model": MODEL_NAME, "dims": DIMS,
                                           "chunks": payload[k:k + EVENT_CHUNKS]}, meta)
               for k in range(0, len(payload), EVENT_CHUNKS)]
        new.append(NewEvent("DocumentIndexed", {"id": document_id, "n_chunks": len(payload),
                                                "at": int(time.time())}, meta))
    try:
        svc.store.append(stream, version, new)
    except ConcurrencyConflict:
        return "skipped: the document changed (deleted?) while it was indexed"
    log.info("indexed %s: %d events in %.2fs", document_id, len(new), time.perf_counter() - t0)
    return f"{len(new)} events"
