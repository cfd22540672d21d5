"""The app factory: configuration, plugins and the Flask app, built in that order."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from relay.metrics import exposition
from relay.config import CORE_SECTIONS, Config, ConfigError, load_config, raw_config
from relay.plugins import get_plugin_manager
from relay.runtime import Relay


def create_app(config: Mapping[str, Any] | str | os.PathLike | None = None) -> Flask:
    """Build a relay app.

    :param config: a dict of configuration tables, or the path of a TOML file. By default the
        file named by ``RELAY_CONFIG``, or nothing: the embedded in-memory relay.
        ``RELAY_*`` environment variables override either.
    :raises ConfigError: naming every bad key; the app is not built.
    """
    raw, source = raw_config(config)
    pm = get_plugin_manager(_early_list(raw, "plugins"), _early_list(raw, "disable_plugins"))
    sections = list(CORE_SECTIONS)
    for declared in pm.hook.relay_config_sections():
        sections.extend(declared or [])
    settings = load_config(raw, sections, source)
    _check_workers(settings)
    _configure_logging(settings)

    app = Flask("relay")
    core = settings.section("")
    app.config["MAX_CONTENT_LENGTH"] = core["max_body_size"]
    app.json.sort_keys = False
    relay = Relay(settings, pm)
    app.extensions["relay"] = relay
    _init_cors(app, core["cors_origins"])
    _init_errors(app)

    @app.get("/healthz")
    def healthz():
        """The process is alive: always 200, with every component's state."""
        return jsonify(relay.health())

    @app.get("/readyz")
    def readyz():
        """Ready for traffic: 503 while any component (a source, a sink) is not up."""
        health = relay.health()
        # "degraded" (e.g. a disabled webhook endpoint) still serves: only down or starting parts count.
        waiting = {name: c for name, c in health["components"].items() if c.get("state") in ("down", "starting")}
        body = {"ready": not waiting, "components": health["components"]}
        return jsonify(body), 503 if waiting else 200

    @app.get("/metrics")
    def prometheus_metrics():
        text, content_type = exposition()
        return Response(text, content_type=content_type)

    @app.before_request
    def start_sources_if_no_server_hook_did():
        # gunicorn.conf.py starts the relay after fork; other WSGI servers get it on first request.
        relay.start()

    pm.hook.relay_init_app(app=app, relay=relay)
    return app


def _check_workers(settings: Config) -> None:
    # RELAY_WORKERS is set by gunicorn.conf.py from gunicorn's own worker count.
    workers = os.environ.get("RELAY_WORKERS", "1")
    if settings.section("")["backbone"] == "memory" and workers.isdigit() and int(workers) > 1:
        raise ConfigError([f"backbone: 'memory' serves a single worker, and {workers} workers are configured; "
                           "events published to one would never reach the others' clients. Configure "
                           "backbone = 'redis://host:port/db' (RELAY_BACKBONE) or run one worker"])


def _early_list(raw: Mapping[str, Any], key: str) -> list[str]:
    # Which plugins to load is needed before the schema exists (plugins declare their own
    # sections); load_config validates the same keys properly afterwards.
    env = os.environ.get(f"RELAY_{key.upper()}")
    if env is not None:
        return [name.strip() for name in env.split(",") if name.strip()]
    value = raw.get(key, [])
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, worker (pid), message."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "worker": record.process,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _configure_logging(settings: Config) -> None:
    core = settings.section("")
    logger = logging.getLogger("relay")
    logger.setLevel(core["log_level"].upper())
    handler = next((h for h in logger.handlers if getattr(h, "relay_handler", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.relay_handler = True
        logger.addHandler(handler)
        logger.propagate = False
    if core["log_format"] == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s [worker %(process)d] %(levelname)s %(name)s: %(message)s"))


def _init_cors(app: Flask, origins: list[str]) -> None:
    if not origins:
        return
    any_origin = "*" in origins

    @app.after_request
    def add_cors_headers(response):
        origin = request.headers.get("Origin")
        if origin and (any_origin or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
            if not any_origin:
                response.headers["Access-Control-Allow-Credentials"] = "true"
            response.vary.add("Origin")
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, Last-Event-ID"
                response.headers["Access-Control-Max-Age"] = "600"
        return response


def _init_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):
        body = {"error": exc.name.lower().replace(" ", "_"), "message": exc.description}
        if exc.code == 413:
            app.extensions["relay"].stats.incr("rejected", source="http", reason="too_large")
            limit = app.config["MAX_CONTENT_LENGTH"]
            body["message"] = f"the body is larger than max_body_size ({limit} bytes)"
        response = jsonify(body)
        response.status_code = exc.code
        for name, value in exc.get_headers():  # keeps Allow on 405, for instance
            if name.lower() != "content-type":
                response.headers[name] = value
        return response


__all__ = ["create_app", "ConfigError"]
