"""Documents of the knowledge base: ingest (text, Markdown, PDF or JSON), list, get, delete."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, metadata, now, owned, page_limit, svc
from api.openai_compat import clean_filename, query_arg, storable, valid_id
from domain.errors import DomainError, NotFound, PayloadTooLarge, ValidationError
from domain.events import DocumentAdded, DocumentDeleted, document_stream
from eventlog.store import NewEvent

bp = Blueprint("knowledge", __name__, url_prefix="/api")

TEXT_TYPES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".text": "text/plain"}
log = logging.getLogger("tunelog.api")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


# Bounds on reading a document in the API process (DESIGN §7: every input has a bound). A PDF is parsed
# here, so its pages, its text and the time spent are bounded, and pypdf's own per-stream limits are
# tightened; at most a few PDFs are read at once, whatever the number of request threads.
PDF_MAX_PAGES = _env_int("TUNELOG_PDF_MAX_PAGES", 500)
PDF_MAX_SECONDS = float(os.environ.get("TUNELOG_PDF_MAX_SECONDS") or 6)
PDF_CONCURRENCY = _env_int("TUNELOG_PDF_CONCURRENCY", 2)
DOCUMENT_MAX_CHARS = _env_int("TUNELOG_DOCUMENT_MAX_CHARS", 3_000_000)
PDF_LIMITS = {
    "maximum_declared_stream_length": 20_000_000, "zlib_maximum_output_length": 20_000_000,
    "lzw_maximum_output_length": 20_000_000, "run_length_maximum_output_length": 20_000_000,
    "array_based_stream_maximum_output_length": 20_000_000, "brotli_maximum_output_length": 20_000_000,
    "stream_decoding_work_maximum_length": 50_000_000, "stream_parsing_work_maximum_count": 500_000,
    "xform_maximum_invocations_per_extraction": 500, "page_tree_maximum_entries": 20_000,
    "page_tree_maximum_page_entries": 20_000, "image_maximum_buffer_size": 20_000_000,
}
_pdf_slots = threading.BoundedSemaphore(PDF_CONCURRENCY)
CHUNKS_PAGE_DEFAULT, CHUNKS_PAGE_MAX = 100, 1000


def document_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "document", "title": row["title"], "filename": row.get("filename"),
            "media_type": row["media_type"], "bytes": row["bytes"], "sha256": row["sha256"], "status": row["status"],
            "n_chunks": row.get("n_chunks", 0), "error": row.get("error"), "created_at": row["created_at"],
            "indexed_at": row.get("indexed_at")}


def _unreadable(message: str) -> ValidationError:
    return ValidationError(message, param="file", code="unreadable_document")


def _too_long(filename: str, n: int | None = None) -> ValidationError:
    got = f" ({n} characters)" if n is not None else ""
    return ValidationError(f"{filename}: the document's text is over {DOCUMENT_MAX_CHARS} characters{got}; split "
                           "it into several documents", param="file", code="document_too_long")


def _busy(message: str) -> DomainError:
    """429 with Retry-After (api/limits.py answers it), or a plain 429 where that module is absent."""
    try:
        from api.limits import TooManyRequests
    except ImportError:
        error = DomainError(message, code="server_busy")
        error.status = 429
        return error
    return TooManyRequests(message, retry_after=5, code="server_busy")


def _read_pdf(filename: str, content: bytes, deadline: float, cancelled: threading.Event) -> str:
    """The PDF's text, page by page, within the bounds above (run in a thread of its own)."""
    from pypdf import PdfReader

    try:
        from pypdf import Configuration, apply_configuration
        limits: Any = apply_configuration(Configuration().with_overwrites(**PDF_LIMITS))
    except (ImportError, TypeError):  # an older pypdf (no such settings): its built-in limits only
        limits = contextlib.nullcontext()
    with limits:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            raise _unreadable(f"{filename}: the PDF is encrypted")
        n_pages = len(reader.pages)
        if n_pages > PDF_MAX_PAGES:
            raise ValidationError(f"{filename}: the PDF has {n_pages} pages; at most {PDF_MAX_PAGES} are read, so "
                                  "split it into several documents", param="file", code="document_too_long")
        parts, size = [], 0
        for i, page in enumerate(reader.pages):
            if cancelled.is_set() or time.monotonic() > deadline:
                raise TimeoutError(f"page {i + 1}")
            text = page.extract_text() or ""
            size += len(text)
            if size > DOCUMENT_MAX_CHARS:
                raise _too_long(filename)
            parts.append(text)
    return "\n\n".join(parts)


def extract_pdf(filename: str, content: bytes) -> str:
    """Read a PDF in a thread, waiting at most PDF_MAX_SECONDS: a PDF that takes longer is refused (400),
    and its thread stops at the next page (pypdf's tightened limits bound the work of one page)."""
    if not _pdf_slots.acquire(timeout=PDF_MAX_SECONDS):
        raise _busy("the server is reading other PDFs at the moment; retry shortly")
    deadline = time.monotonic() + PDF_MAX_SECONDS
    cancelled = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["text"] = _read_pdf(filename, content, deadline, cancelled)
        except BaseException as e:  # noqa: BLE001 - handed to the request thread
            outcome["error"] = e
        finally:
            _pdf_slots.release()

    worker = threading.Thread(target=run, name="pdf-extract", daemon=True)
    worker.start()
    worker.join(PDF_MAX_SECONDS + 0.5)
    if worker.is_alive() or isinstance(outcome.get("error"), TimeoutError):
        cancelled.set()
        raise ValidationError(f"{filename}: reading the PDF took longer than {PDF_MAX_SECONDS:g} s; split it into "
                              "smaller documents or send its text", param="file", code="document_too_complex")
    error = outcome.get("error")
    if isinstance(error, ValidationError):
        raise error
    if error is not None:
        # pypdf raises all sorts of errors on hostile or broken files (not only PyPdfError): each means
        # that this file cannot be read, none is a fault of the server
        log.info("unreadable PDF %r: %s: %s", filename, type(error).__name__, error)
        message = str(error)[:200]
        raise _unreadable(f"{filename}: not a readable PDF ({type(error).__name__}: {message})") from error
    return outcome["text"]


def extract_text(filename: str, content: bytes, mimetype: str | None) -> tuple[str, str]:
    """(text, media type) of an upload, or a 400 naming what is wrong with it."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".pdf" or mimetype == "application/pdf" or content[:5] == b"%PDF-":
        text = extract_pdf(filename, content)
        # text drawn from a PDF may hold lone surrogates (a broken font map): no UTF-8, so replace them
        text = text.encode("utf-8", "replace").decode("utf-8")
        media = "application/pdf"
    elif suffix in TEXT_TYPES or (mimetype or "").startswith("text/") or not suffix:
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = content.count(b"\n", 0, e.start) + 1
            raise _unreadable(f"{filename}: not UTF-8 text (line {line}, byte {e.start})") from e
        media = TEXT_TYPES.get(suffix, "text/plain")
    else:
        raise ValidationError(f"{filename}: unsupported document type {suffix!r}; send .txt, .md or .pdf, or JSON "
                              "{\"title\", \"text\"}", param="file", code="unsupported_document")
    text = text.replace("\x00", "")  # Postgres text cannot hold NUL
    if not text.strip():
        raise _unreadable(f"{filename}: no text could be read from it")
    if len(text) > DOCUMENT_MAX_CHARS:
        raise _too_long(filename, len(text))
    return text, media


@bp.post("/documents")
def add_document():
    p = require("admin", "trainer")
    limit = svc().settings.max_upload_bytes
    if request.content_length and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(f"the document is over the upload limit of {limit} bytes", param="file")
    if request.mimetype == "application/json":
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # the json module's nesting limit (silent= only covers ValueError)
            body = None
        if not isinstance(body, dict):
            raise ValidationError("the request body must be a JSON object", param=None)
        title, text = body.get("title"), body.get("text")
        if not isinstance(title, str) or not title.strip():
            raise ValidationError("title is required (a non-empty string)", param="title")
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("text is required (a non-empty string)", param="text")
        for name, value in (("title", title), ("text", text)):
            if not storable(value.replace("\x00", "")):
                raise ValidationError(f"{name} is not valid Unicode text (it holds lone surrogates)", param=name)
        text = text.replace("\x00", "")  # Postgres text cannot hold NUL (as for uploads)
        if not text.strip():
            raise ValidationError("text is required (a non-empty string)", param="text")
        if len(text) > DOCUMENT_MAX_CHARS:
            raise ValidationError(f"text is over {DOCUMENT_MAX_CHARS} characters ({len(text)}); split it into "
                                  "several documents", param="text", code="document_too_long")
        content, filename, media = text.encode(), None, "text/plain"
    else:
        upload = request.files.get("file")
        if upload is None:
            raise ValidationError("send multipart field 'file' (.txt, .md, .pdf) or a JSON {\"title\", \"text\"}",
                                  param="file")
        content = upload.read()
        filename = clean_filename(upload.filename, "document.txt")
        if len(content) > limit:
            raise PayloadTooLarge(f"the document is {len(content)} bytes, over the limit of {limit}", param="file")
        text, media = extract_text(filename, content, upload.mimetype)
        title = request.form.get("title") or Path(filename).stem
    title = " ".join("".join(ch if ch.isprintable() else " " for ch in title).split())  # one line, no controls
    if not title:
        raise ValidationError("title must hold some visible text", param="title")
    sha = hashlib.sha256(content).hexdigest()
    text_bytes = text.encode("utf-8")
    text_sha = hashlib.sha256(text_bytes).hexdigest()
    idem = Idempotent({"title": title, "sha256": sha})
    with svc().pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s), (%s, %s) ON CONFLICT DO NOTHING",
                  (sha, content, text_sha, text_bytes))
    doc_id = "doc-" + uuid.uuid4().hex[:24]
    ev = DocumentAdded(id=doc_id, project=p.project, title=title[:500], filename=filename, media_type=media,
                       bytes=len(content), sha256=sha, text_sha256=text_sha, created_at=now())
    body = document_object({**ev.to_data(), "status": "processing"})
    return append_and_respond(idem, 201, body, lambda cmd: svc().store.append(
        document_stream(doc_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(doc_id))], command=cmd))


def _get(doc_id: str) -> dict[str, Any]:
    if not valid_id(doc_id):
        raise NotFound(f"no such document: {doc_id!r}", param="document_id")
    return owned("documents", doc_id, "document", "document_id")


@bp.get("/documents")
def list_documents():
    limit = page_limit(default=100, maximum=1000)
    with svc().pool.connection() as c:
        rows = c.execute("SELECT * FROM documents WHERE project = %s ORDER BY seq DESC LIMIT %s",
                         (g.principal.project, limit)).fetchall()
    return jsonify({"object": "list", "data": [document_object(r) for r in rows]})


@bp.get("/documents/<doc_id>")
def get_document(doc_id: str):
    return jsonify(document_object(_get(doc_id)))


@bp.get("/documents/<doc_id>/chunks")
def document_chunks(doc_id: str):
    """A page of the document's chunks in order: `limit` (default 100, at most 1000) after the chunk index
    `after`; `has_more` and `next_after` (the last index of this page) lead to the next page."""
    _get(doc_id)
    limit = page_limit(default=CHUNKS_PAGE_DEFAULT, maximum=CHUNKS_PAGE_MAX)
    raw = query_arg("after", max_length=20)
    after = -1
    if raw is not None:
        if not raw.isdecimal() or int(raw) >= 2**31:  # chunk indexes are integers from 0
            raise ValidationError(f"after must be a chunk index (an integer from 0), got {raw!r}", param="after")
        after = int(raw)
    with svc().pool.connection() as c:
        rows = c.execute("SELECT idx, text, char_start, char_end FROM chunks WHERE document_id = %s AND idx > %s "
                         "ORDER BY idx LIMIT %s", (doc_id, after, limit + 1)).fetchall()
    data = rows[:limit]
    return jsonify({"object": "list", "data": data, "has_more": len(rows) > limit,
                    "next_after": data[-1]["idx"] if data else None})


@bp.delete("/documents/<doc_id>")
def delete_document(doc_id: str):
    require("admin", "trainer")
    _get(doc_id)
    idem = Idempotent({"document": doc_id})
    ev = DocumentDeleted(id=doc_id, at=now())
    # No expected version: deleting wins over an indexing in flight (whose own append then conflicts).
    return append_and_respond(idem, 200, {"id": doc_id, "object": "document", "deleted": True},
                              lambda cmd: svc().store.append(document_stream(doc_id), None,
                                                             [NewEvent(ev.type, ev.to_data(), metadata(doc_id))],
                                                             command=cmd))
