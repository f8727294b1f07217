"""Documents of the knowledge base: ingest (text, Markdown, PDF or JSON), list, get, delete."""
from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, metadata, now, owned, page_limit, svc
from domain.errors import PayloadTooLarge, ValidationError
from domain.events import DocumentAdded, DocumentDeleted, document_stream
from eventlog.store import NewEvent

bp = Blueprint("knowledge", __name__, url_prefix="/api")

TEXT_TYPES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".text": "text/plain"}


def document_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "document", "title": row["title"], "filename": row.get("filename"),
            "media_type": row["media_type"], "bytes": row["bytes"], "sha256": row["sha256"], "status": row["status"],
            "n_chunks": row.get("n_chunks", 0), "error": row.get("error"), "created_at": row["created_at"],
            "indexed_at": row.get("indexed_at")}


def extract_text(filename: str, content: bytes, mimetype: str | None) -> tuple[str, str]:
    """(text, media type) of an upload, or a 400 naming what is wrong with it."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".pdf" or mimetype == "application/pdf" or content[:5] == b"%PDF-":
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(content))
            if reader.is_encrypted:
                raise ValidationError(f"{filename}: the PDF is encrypted", param="file", code="unreadable_document")
            text = "\n\n".join((page.extract_text() or "") for page in reader.pages)
        except (PyPdfError, ValueError, KeyError, TypeError) as e:
            raise ValidationError(f"{filename}: not a readable PDF ({type(e).__name__}: {e})", param="file",
                                  code="unreadable_document") from e
        media = "application/pdf"
    elif suffix in TEXT_TYPES or (mimetype or "").startswith("text/") or not suffix:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValidationError(f"{filename}: not UTF-8 text (byte {e.start})", param="file",
                                  code="unreadable_document") from e
        media = TEXT_TYPES.get(suffix, "text/plain")
    else:
        raise ValidationError(f"{filename}: unsupported document type {suffix!r}; send .txt, .md or .pdf, or JSON "
                              "{\"title\", \"text\"}", param="file", code="unsupported_document")
    text = text.replace("\x00", "")
    if not text.strip():
        raise ValidationError(f"{filename}: no text could be read from it", param="file", code="unreadable_document")
    return text, media


@bp.post("/documents")
def add_document():
    p = require("admin", "trainer")
    limit = svc().settings.max_upload_bytes
    if request.content_length and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(f"the document is over the upload limit of {limit} bytes", param="file")
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ValidationError("the request body must be a JSON object", param=None)
        title, text = body.get("title"), body.get("text")
        if not isinstance(title, str) or not title.strip():
            raise ValidationError("title is required (a non-empty string)", param="title")
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("text is required (a non-empty string)", param="text")
        content, filename, media = text.encode(), None, "text/plain"
    else:
        upload = request.files.get("file")
        if upload is None:
            raise ValidationError("send multipart field 'file' (.txt, .md, .pdf) or a JSON {\"title\", \"text\"}",
                                  param="file")
        content = upload.read()
        filename = Path(upload.filename or "document.txt").name
        if len(content) > limit:
            raise PayloadTooLarge(f"the document is {len(content)} bytes, over the limit of {limit}", param="file")
        text, media = extract_text(filename, content, upload.mimetype)
        title = (request.form.get("title") or Path(filename).stem).strip()
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
    _get(doc_id)
    with svc().pool.connection() as c:
        rows = c.execute("SELECT idx, text, char_start, char_end FROM chunks WHERE document_id = %s ORDER BY idx",
                         (doc_id,)).fetchall()
    return jsonify({"object": "list", "data": rows})


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
