"""A Flask extension that publishes to a relay from any Flask app (Flask-SSE's ``sse.publish()``).

::

    from flask import Flask
    from relay.flask import Relay

    app = Flask(__name__)
    app.config["RELAY_URL"] = "http://127.0.0.1:8000"
    relay = Relay(app)                  # or relay = Relay(); relay.init_app(app) in a factory

    @app.post("/react")
    def react():
        published = relay.publish("demo", "emote", {"emote": "dolphin"})
        return {"id": published.id}

Settings, read from ``app.config`` by :meth:`Relay.init_app`: ``RELAY_URL`` (default
``http://127.0.0.1:8000``), ``RELAY_TOKEN`` (a JWT, sent as ``Authorization: Bearer``),
``RELAY_TIMEOUT`` (5 s per attempt), ``RELAY_RETRIES`` (3), ``RELAY_MAX_RETRY_AFTER`` (5 s).
``publish`` raises the errors of :mod:`relay.client` (:class:`RelayError` and its subclasses).

This is the *publishing* side for an app that is not relay: it imports neither gevent nor the
relay app, and blocks the calling request for at most the timeout and retries above.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, has_app_context

from relay.client import DEFAULT_URL, Published, RelayClient, RelayError

__all__ = ["Relay", "RelayError"]

EXTENSION = "relay_client"  # app.extensions key ("relay" is the relay app's own runtime)


class Relay:
    """Publishes to a relay from a Flask app; see the module's doc."""

    def __init__(self, app: Flask | None = None):
        self.app = app  # used outside an app context (a worker thread, a CLI command)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build this app's client from its config (one per app: the extension may serve several)."""
        config = app.config
        config.setdefault("RELAY_URL", DEFAULT_URL)
        config.setdefault("RELAY_TOKEN", None)
        config.setdefault("RELAY_TIMEOUT", 5.0)
        config.setdefault("RELAY_RETRIES", 3)
        config.setdefault("RELAY_MAX_RETRY_AFTER", 5.0)
        app.extensions[EXTENSION] = RelayClient(
            config["RELAY_URL"], config["RELAY_TOKEN"], timeout=float(config["RELAY_TIMEOUT"]),
            retries=int(config["RELAY_RETRIES"]), max_retry_after=float(config["RELAY_MAX_RETRY_AFTER"]))

    @property
    def client(self) -> RelayClient:
        """The current app's client (or the one of the app given to the constructor)."""
        app = current_app if has_app_context() else self.app
        if app is None:
            raise RuntimeError("relay.flask.Relay: no Flask app: call publish inside an app context "
                               "(a request, `with app.app_context():`) or pass the app to Relay(app)")
        client = app.extensions.get(EXTENSION)
        if client is None:
            raise RuntimeError(f"relay.flask.Relay: the app {app.name!r} was not set up: call relay.init_app(app)")
        return client

    def publish(self, channel: str, event: str, data: Any = None, id: str | None = None) -> Published:
        """Publish ``event`` with ``data`` on ``channel``; returns the :class:`~relay.client.Published`
        event (``.id``, ``.channel``). See :meth:`relay.client.RelayClient.publish`."""
        return self.client.publish(channel, event, data, id)
