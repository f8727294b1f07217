"""The Flask API: create_app() wires settings, services, blueprints and error handlers."""
from __future__ import annotations

import os
from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    import logging

    from api import (
        admin,
        audit,
        auth,
        chat,
        errors,
        evals,
        health,
        job_control,
        knowledge,
        limits,
        openai_compat,
        programs,
        registry,
        teacher,
        web,
        webhooks,
    )
    from api.exports import register as register_exports
    from eventlog import settings as settings_mod
    from eventlog.bootstrap import bootstrap

    if not logging.getLogger().handlers:  # under gunicorn nothing configures it: tracebacks would be lost
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("httpx", "httpx2"):  # the provider SDK's HTTP client logs each request's URL at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    app = Flask(__name__, static_folder=None)  # the UI's files are served by api/web under /ui/
    s = (test_config or {}).get("settings") or settings_mod.load()
    # a connection for every request thread (they are held briefly, but a pool smaller than the thread
    # count makes requests queue for one under load)
    app.extensions["tunelog"] = bootstrap(s, pool_size=limits.web_threads())
    # Werkzeug refuses larger bodies with 413 before we read them; multipart adds a little overhead.
    app.config["MAX_CONTENT_LENGTH"] = s.max_upload_bytes + 64 * 1024
    app.config["TUNELOG_MAX_UPLOAD_BYTES"] = s.max_upload_bytes
    app.json.sort_keys = False
    health.register(app)
    auth.register(app)
    errors.register(app)
    limits.register(app)  # after auth: rates are per API key
    app.register_blueprint(health.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(job_control.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(knowledge.bp)
    app.register_blueprint(registry.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(teacher.bp)  # the review queue of corrections, a job's estimate
    app.register_blueprint(programs.bp)  # DSPy programs: export and import
    app.register_blueprint(audit.bp)  # history, lineage, the registry as of a point, chat records
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(evals.bp)  # OpenAI's Evals: evals, runs, output items
    register_exports(app)  # /api/models/<id>/export(s), DELETE /v1/models/<id>
    app.register_blueprint(web.bp)
    if os.environ.get("TUNELOG_PRELOAD_MODELS") == "1":
        _preload(s)
    return app


def _preload(s) -> None:
    """Load the embedding model and the prompt-measuring tokenizers in the background, so the first chat is not
    slow."""
    import logging
    import threading

    def load() -> None:
        try:
            from eventlog.catalog import BASE_MODELS
            from eventlog.embeddings import embedder
            from eventlog.generation import server

            embedder().encode(["warm up"])
            for base in BASE_MODELS:  # the tokenizers that measure prompts (the serving tier generates)
                server(s.model_dir, s.data_dir).context_window(base)
        except Exception:  # the first request will load (and report) it instead
            logging.getLogger("tunelog.api").exception("preloading models failed")

    threading.Thread(target=load, daemon=True, name="preload").start()
