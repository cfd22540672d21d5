"""The app factory: configuration, plugins and the Flask app, built in that order."""

from __future__ import annotations

import io
import os
import socket
from urllib.parse import unquote_to_bytes
from typing import Any, Mapping

import gevent
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.wsgi import get_content_length

from relay import signals
from relay.logs import configure_relay_logger, log_refused_body
from relay.metrics import exposition
from relay.config import CORE_SECTIONS, Config, ConfigError, load_config, raw_config
from relay.plugins import get_plugin_manager
from relay.runtime import Relay


def create_app(config: Mapping[str, Any] | str | os.PathLike | None = None, *,
               server: Mapping[str, Any] | None = None) -> Flask:
    """Build a relay app.

    :param config: a dict of configuration tables, or the path of a TOML file. By default the
        file named by ``RELAY_CONFIG``, or nothing: the embedded in-memory relay.
        ``RELAY_*`` environment variables override a file; a dict wins over them (Flask's test
        config), and they fill only the keys it does not set.
    :param server: the ``[server]`` values (``bind``, ``workers``, ``worker_connections``,
        ``graceful_timeout``) the server actually runs with; they replace the configured ones.
        relay.wsgi_app passes gunicorn's (see relay.gunicorn_config.post_fork).
    :raises ConfigError: naming every bad key; the app is not built.
    """
    raw, source = raw_config(config)
    explicit = isinstance(config, Mapping)  # a dict wins over RELAY_* variables; a file does not
    pm = get_plugin_manager(_early_list(raw, "plugins", explicit), _early_list(raw, "disable_plugins", explicit))
    sections = list(CORE_SECTIONS)
    for declared in pm.hook.relay_config_sections():
        sections.extend(declared or [])
    settings = load_config(raw, sections, source, explicit=explicit, server=server)
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
    _init_body_limits(app, core["max_body_size"], core["body_timeout"])

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

    @app.get("/openapi.json")
    def openapi_document():
        """The HTTP API this relay serves (its configuration and plugins), as OpenAPI 3.1."""
        from relay.openapi import document

        return jsonify(document(app, relay))

    @app.before_request
    def start_sources_if_no_server_hook_did():
        # gunicorn.conf.py starts the relay after fork; other WSGI servers get it on first request.
        relay.start()

    @app.before_request
    def refuse_urls_that_are_not_utf8():
        # Werkzeug decodes the path and query with U+FFFD for bytes that are not UTF-8, so
        # /events/%FF and /events/%FE would both name the channel "\ufffd": refuse them instead.
        try:  # WSGI gives both as latin-1 text of the bytes received
            request.environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
            unquote_to_bytes(request.environ.get("QUERY_STRING", "").encode("latin-1")).decode("utf-8")
        except UnicodeError:
            return jsonify({"error": "invalid_request",
                            "message": "the URL is not UTF-8: its %-escapes must encode UTF-8 text"}), 400
        return None

    pm.hook.relay_init_app(app=app, relay=relay)
    return app


def _check_workers(settings: Config) -> None:
    # Under gunicorn, server.workers is gunicorn's own worker count (create_app's ``server``).
    workers = settings.section("server")["workers"]
    if settings.section("")["backbone"] == "memory" and workers > 1:
        raise ConfigError([f"backbone: 'memory' serves a single worker, and {workers} workers are configured; "
                           "events published to one would never reach the others' clients. Configure "
                           "backbone = 'redis://host:port/db' (RELAY_BACKBONE) or run one worker"])


def _early_list(raw: Mapping[str, Any], key: str, explicit: bool = False) -> list[str]:
    # Which plugins to load is needed before the schema exists (plugins declare their own
    # sections); load_config validates the same keys properly afterwards, with the same
    # precedence (a create_app dict's key wins over the variable, the variable over a file's).
    env = os.environ.get(f"RELAY_{key.upper()}")
    if env is not None and not (explicit and key in raw):
        return [name.strip() for name in env.split(",") if name.strip()]
    value = raw.get(key, [])
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _configure_logging(settings: Config) -> None:
    core = settings.section("")
    configure_relay_logger(core["log_format"], core["log_level"])


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


def _init_body_limits(app: Flask, max_size: int, timeout: float) -> None:
    @app.before_request
    def read_body_within_limits():
        """Read every request body here, whole, bounded in bytes and in time, before any view.

        A view reading ``wsgi.input`` itself would wait as long as the client likes (one byte a
        second holds a worker connection forever) and, for a chunked body, werkzeug cuts it at
        ``max_body_size`` without a word. Here a slow body gets 408 and a large one 413, and the
        view finds the body in memory, with its length, through the usual ``request.get_data()``.
        """
        environ = request.environ
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = None if chunked else get_content_length(environ)
        if not chunked and not length:
            return  # no body: GET, streams, health checks
        if length is not None and length > max_size:
            raise RequestEntityTooLarge()
        environ["relay.close_after_error"] = True  # until the body is read: see close_connection_after
        body = _read_body(environ["wsgi.input"], length, max_size, timeout)
        environ["relay.close_after_error"] = False
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)  # no longer chunked: it is all in memory


def _read_body(stream, length: int | None, max_size: int, timeout: float) -> bytes:
    """The body from ``stream``: ``length`` bytes, or up to its end when chunked (``None``).

    :raises RequestTimeout: when it has not all arrived within ``timeout`` seconds (a whole-body
        deadline: a per-read timeout would let one byte every few seconds through).
    :raises RequestEntityTooLarge: when a chunked body goes over ``max_size``.
    """
    chunks, size = [], 0
    wanted = length if length is not None else max_size + 1  # one byte over is enough to know
    deadline = gevent.Timeout(timeout)
    deadline.start()
    try:
        while size < wanted:
            chunk = stream.read(min(65536, wanted - size))
            if not chunk:
                break  # the end of a chunked body (or a client that gave up)
            chunks.append(chunk)
            size += len(chunk)
    except gevent.Timeout as exc:
        if exc is not deadline:
            raise  # someone else's timeout
        raise RequestTimeout(f"the request body did not arrive within body_timeout ({timeout:g} s)") from None
    except Exception as exc:  # noqa: BLE001 - gunicorn's errors for a malformed chunked body, a cut body
        raise BadRequest(f"the request body could not be read: {type(exc).__name__} {exc}".rstrip()) from None
    finally:
        deadline.close()
    if size > max_size:
        raise RequestEntityTooLarge()
    if length is not None and size < length:
        raise BadRequest(f"the request body ended after {size} of its {length} bytes (Content-Length)")
    return b"".join(chunks)


def close_connection_after(response: Response, drain: bool = False) -> None:
    """End the connection once ``response`` is sent, instead of keeping it alive for another
    request: after a refused body, the rest of it is still coming (perhaps a byte at a time) and
    gunicorn would wait for it; after a refused stream, the client would keep a worker connection
    idle for ``keepalive`` seconds, which is what the stream limits are there to prevent.

    :param drain: the client may still be sending (a refused body): discard what comes for up to
        a second first, since closing with unread bytes resets the connection, and a reset can
        destroy the answer before the client has read it.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return

    def close():
        try:
            sock.shutdown(socket.SHUT_WR)  # the answer is out: FIN after it
            if drain:
                with gevent.Timeout(1, False):
                    while sock.recv(65536):
                        pass
            sock.shutdown(socket.SHUT_RD)  # gunicorn's next read sees the end and closes
        except OSError:
            pass  # already gone

    response.call_on_close(close)


def _init_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):
        body = {"error": exc.name.lower().replace(" ", "_"), "message": exc.description}
        if exc.code == 413:
            signals.event_rejected.send(app.extensions["relay"], source="http", reason="too_large")
            limit = app.config["MAX_CONTENT_LENGTH"]
            body["message"] = f"the body is larger than max_body_size ({limit} bytes)"
        if exc.code == 408:
            signals.event_rejected.send(app.extensions["relay"], source="http", reason="body_timeout")
        if exc.code in (408, 413):  # a refused body, logged like a refused publish (relay.publish)
            log_refused_body(request, exc.code, body["error"], body["message"])
        response = jsonify(body)
        response.status_code = exc.code
        if exc.code in (408, 413) or request.environ.get("relay.close_after_error"):
            close_connection_after(response, drain=True)
        for name, value in exc.get_headers():  # keeps Allow on 405, for instance
            if name.lower() != "content-type":
                response.headers[name] = value
        return response


__all__ = ["ConfigError", "close_connection_after", "create_app"]
