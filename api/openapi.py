"""The OpenAPI document for the routes this server answers (kept beside the code that serves them)."""
from __future__ import annotations

from typing import Any

ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, tag: str, body: dict | None = None, params: list | None = None, ok: str = "200") -> dict:
    op: dict[str, Any] = {"summary": summary, "tags": [tag],
                          "responses": {ok: {"description": "success"}, "400": ERR, "401": ERR, "404": ERR}}
    if body:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, desc: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": desc}


def _p(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


JSON = lambda ref: {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}  # noqa: E731


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "tunelog", "version": "0.1.0",
                 "description": "Fine-tuning and serving an educational chatbot's models, OpenAI-compatible."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": ["string", "null"]}, "message": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "type": {"type": "string"}}}}},
                "CreateJob": {"type": "object", "required": ["model", "training_file"], "properties": {
                    "model": {"type": "string"}, "training_file": {"type": "string"},
                    "validation_file": {"type": "string"}, "suffix": {"type": "string", "maxLength": 64},
                    "seed": {"type": "integer"}, "metadata": {"type": "object"},
                    "method": {"type": "object"}}},
                "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
                    "model": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object"}},
                    "stream": {"type": "boolean"}, "max_tokens": {"type": "integer"},
                    "temperature": {"type": "number"}, "top_p": {"type": "number"}, "seed": {"type": "integer"},
                    "retrieval": {"oneOf": [{"type": "boolean"}, {"type": "object"}]}}},
                "Promote": {"type": "object", "required": ["model", "reason"], "properties": {
                    "model": {"type": "string"}, "reason": {"type": "string"}}},
                "Settings": {"type": "object", "properties": {"store_chat_text": {"type": "boolean"},
                                                              "promotion_requires_better_eval": {"type": "boolean"}}},
                "CreateKey": {"type": "object", "properties": {"role": {"enum": ["admin", "trainer", "viewer"]},
                                                               "project": {"type": "string"},
                                                               "name": {"type": "string"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {**_op("Liveness and dependencies", "ops"), "security": []}},
            "/metrics": {"get": {**_op("Prometheus metrics", "ops"), "security": []}},
            "/v1/files": {
                "get": _op("List files", "files", params=[_q("purpose", "filter"), _q("after", "cursor"),
                                                          _q("limit", "page size")]),
                "post": _op("Upload a JSONL training file", "files", body={"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file", "purpose"],
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   "purpose": {"enum": ["fine-tune"]}}}}}),
            },
            "/v1/files/{file_id}": {"get": _op("Retrieve a file", "files", params=[_p("file_id")]),
                                    "delete": _op("Delete a file", "files", params=[_p("file_id")])},
            "/v1/files/{file_id}/content": {"get": _op("File content", "files", params=[_p("file_id")])},
            "/v1/fine_tuning/jobs": {
                "post": _op("Create a fine-tuning job", "fine-tuning", body=JSON("CreateJob")),
                "get": _op("List jobs", "fine-tuning", params=[_q("after", "cursor"), _q("limit", "page size"),
                                                               _q("metadata[key]", "metadata filter")]),
            },
            "/v1/fine_tuning/jobs/{job_id}": {"get": _op("Retrieve a job", "fine-tuning", params=[_p("job_id")])},
            "/v1/fine_tuning/jobs/{job_id}/cancel": {"post": _op("Cancel a job", "fine-tuning",
                                                                 params=[_p("job_id")])},
            "/v1/fine_tuning/jobs/{job_id}/events": {"get": _op(
                "Job events, newest first", "fine-tuning",
                params=[_p("job_id"), _q("after", "event id cursor"), _q("limit", "page size"),
                        _q("type", "message or metrics")])},
            "/v1/fine_tuning/jobs/{job_id}/checkpoints": {"get": _op("Job checkpoints", "fine-tuning",
                                                                     params=[_p("job_id")])},
            "/v1/models": {"get": _op("Base and fine-tuned models", "models")},
            "/v1/models/{model_id}": {"get": _op("Retrieve a model", "models", params=[_p("model_id")])},
            "/api/keys": {"post": _op("Create an API key (admin)", "admin", body=JSON("CreateKey"), ok="201"),
                          "get": _op("List API keys (admin)", "admin")},
            "/api/keys/{key_id}": {"delete": _op("Revoke an API key (admin)", "admin", params=[_p("key_id")])},
            "/api/events": {"get": _op("Audit log (admin)", "admin",
                                       params=[_q("after", "position"), _q("limit", "page size"),
                                               _q("stream", "stream id")])},
            "/api/admin/replay": {"post": _op("Rebuild every read model from the log (admin)", "admin")},
            "/v1/chat/completions": {"post": _op(
                "Chat (OpenAI shape; stream true/false) with retrieval over the knowledge base", "chat",
                body=JSON("ChatRequest"))},
            "/api/documents": {
                "post": _op("Add a document (multipart file .txt/.md/.pdf, or JSON {title, text})", "knowledge",
                            ok="201"),
                "get": _op("List documents", "knowledge", params=[_q("limit", "page size")]),
            },
            "/api/documents/{document_id}": {"get": _op("Retrieve a document", "knowledge", params=[_p("document_id")]),
                                             "delete": _op("Delete a document and its chunks", "knowledge",
                                                           params=[_p("document_id")])},
            "/api/documents/{document_id}/chunks": {"get": _op("A document's chunks", "knowledge",
                                                               params=[_p("document_id")])},
            "/api/aliases": {"get": _op("Aliases of this project", "registry")},
            "/api/aliases/{alias}": {"get": _op("An alias's target", "registry", params=[_p("alias")]),
                                     "post": _op("Promote a model to the alias, with a reason", "registry",
                                                 params=[_p("alias")], body=JSON("Promote"))},
            "/api/aliases/{alias}/history": {"get": _op("Every change of the alias", "registry", params=[_p("alias")])},
            "/api/settings": {"get": _op("Project settings", "registry"),
                              "put": _op("Change project settings (admin)", "registry", body=JSON("Settings"))},
            "/api/chat/answers": {"get": _op("Which model answered what (admin)", "chat",
                                             params=[_q("model", "filter"), _q("limit", "page size")])},
            "/api/chat/feedback": {"post": _op("Rate an answer, optionally with a correction", "chat", ok="201")},
            "/api/chat/feedback/{feedback_id}/approve": {"post": _op("Approve a correction for training", "chat",
                                                                     params=[_p("feedback_id")])},
            "/api/datasets/from-feedback": {"post": _op("Build a fine-tune file from approved corrections", "chat")},
            "/api/jobs/{job_id}/stream": {"get": _op("A job's events as server-sent events", "fine-tuning",
                                                     params=[_p("job_id")])},
        },
    }
