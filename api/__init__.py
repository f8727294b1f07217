"""The Flask API: create_app() wires settings, services, blueprints and error handlers."""
from __future__ import annotations

from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    from api import admin, auth, chat, errors, health, knowledge, openai_compat, registry, web
    from eventlog import settings as settings_mod
    from eventlog.bootstrap import bootstrap

    app = Flask(__name__)
    s = (test_config or {}).get("settings") or settings_mod.load()
    app.extensions["tunelog"] = bootstrap(s, pool_size=16)
    # Werkzeug refuses larger bodies with 413 before we read them; multipart adds a little overhead.
    app.config["MAX_CONTENT_LENGTH"] = s.max_upload_bytes + 64 * 1024
    app.config["TUNELOG_MAX_UPLOAD_BYTES"] = s.max_upload_bytes
    app.json.sort_keys = False
    health.register(app)
    auth.register(app)
    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(knowledge.bp)
    app.register_blueprint(registry.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(web.bp)
    return app
