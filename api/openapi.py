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
            "/api/events": {"get": _op("Audit log (admin)", "admin",
                                       params=[_q("after", "position"), _q("limit", "page size"),
                                               _q("stream", "stream id")])},
            "/api/admin/replay": {"post": _op("Rebuild every read model from the log (admin)", "admin")},
        },
    }
