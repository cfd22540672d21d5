"""HTTP publishing: ``POST /events/<channel>`` with ``{"event": …, "data": …, "id": …}``.

Answers ``202 {"id": …}`` once the event is in the backbone, or a JSON error saying what was
wrong: ``400`` for a body that is not UTF-8 JSON or nests deeper than ``MAX_DEPTH`` (32),
``408`` for a body slower than ``body_timeout``, ``413`` over ``max_body_size``, ``415`` without
``Content-Type: application/json``, ``422`` for a JSON body of the wrong shape. A rejected request
publishes nothing.

Requiring ``application/json`` is also what stops cross-site forms: a browser sends a form, or a
``fetch`` with a "simple" content type, to any site without asking, but a JSON one only after a
CORS preflight that ``cors_origins`` decides.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

from flask import Blueprint, jsonify, request

from relay.api import (
    BackboneUnavailable,
    BadMessage,
    Event,
    InvalidEvent,
    Option,
    Section,
    check_name,
    event_rejected,
    hookimpl,
    parse_object,
)

FIELDS = ("event", "data", "id")
log = logging.getLogger("relay.publish")
LOGGED_TEXT = 300  # characters of a channel or message kept in a log line


def _excerpt(text: str) -> str:
    return text if len(text) <= LOGGED_TEXT else text[:LOGGED_TEXT] + "…"


def _error(status: int, error: str, message: str):
    return jsonify({"error": error, "message": message}), status


@hookimpl
def relay_config_sections():
    return [Section("publish", (
        Option("rate", float, 0.0, "publish requests per second allowed per token (or client address "
               "without one), per worker; 0 turns the limit off", env="RELAY_PUBLISH_RATE", min=0),
        Option("burst", int, 20, "requests allowed at once above the steady rate", env="RELAY_PUBLISH_BURST", min=1),
    ), "HTTP publishing.")]


class RateLimiter:
    """A token bucket per key, in this worker; the least recently seen keys are forgotten."""

    MAX_KEYS = 10_000

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def wait_time(self, key: str) -> float:
        """0 when the request may go now (and takes a token), else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[key] = (tokens - 1 if not wait else tokens, now)
        if len(self.buckets) > self.MAX_KEYS:
            self.buckets.popitem(last=False)
        return wait


@hookimpl
def relay_init_app(app, relay):
    blueprint = Blueprint("http_publish", __name__)
    settings = relay.config.section("publish")
    limiter = RateLimiter(settings["rate"], settings["burst"]) if settings["rate"] else None

    def refuse(status: int, error: str, message: str, reason: str):
        """Answer a refused publish: counted, logged with why (never with the body), and JSON."""
        event_rejected.send(relay, source="http", reason=reason, error=message)  # counted; logged below
        channel = request.view_args.get("channel", "") if request.view_args else ""
        address = request.remote_addr or "-"
        # INFO, not WARNING: a client's mistake, not relay's. The message names the field; the
        # body may hold anything (secrets, personal data) and stays out of the log.
        log.info("publish refused: %d %s on channel %r from %s: %s", status, error, _excerpt(channel), address,
                 _excerpt(message), extra={"fields": {
                     "status": status, "error": error, "reason": reason, "channel": _excerpt(channel),
                     "client": address, "detail": _excerpt(message)}})
        return _error(status, error, message)

    @blueprint.post("/events/<channel>")
    def publish(channel: str):
        if request.mimetype != "application/json":  # parameters such as charset are allowed
            got = f"got {request.content_type!r}" if request.content_type else "the request has none"
            return refuse(415, "unsupported_media_type", f"Content-Type must be application/json; {got}",
                          "wrong_content_type")
        decision = relay.authorize(request, "publish", [channel])
        if not decision.allowed:
            return refuse(decision.status, "unauthorized" if decision.status == 401 else "forbidden",
                          decision.message, "unauthorized" if decision.status == 401 else "forbidden")
        if limiter is not None:
            wait = limiter.wait_time(decision.subject or request.remote_addr or "unknown")
            if wait:
                relay.stats.incr("rate_limited")
                response, status = refuse(429, "rate_limited", f"over {settings['rate']:g} publishes per second; "
                                          f"retry in {wait:.1f}s", "rate_limited")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response, status
        body = request.get_data(cache=False)  # read whole by relay.app: 408 or 413 before we get here
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return refuse(400, "invalid_body", f"the body is not UTF-8: {exc}", "not_utf8")
        try:
            message = parse_object(text, FIELDS, "the body")  # the parser of broker envelopes too
        except BadMessage as exc:  # not JSON or too deep: 400; JSON of the wrong shape: 422
            if exc.reason == "wrong_shape":
                return refuse(422, "invalid_event", exc.detail, exc.reason)
            return refuse(400, "invalid_json", exc.detail, exc.reason)
        try:
            check_name("channel", channel)
            event = Event(channel, message["event"], message.get("data"), id=message.get("id"), source="http")
        except InvalidEvent as exc:
            return refuse(422, "invalid_event", str(exc), "invalid_field")
        try:
            published = relay.publish(event, broadcast=True)  # every worker's clients must see it
        except InvalidEvent as exc:
            return refuse(422, "invalid_event", str(exc), "invalid_field")
        except BackboneUnavailable as exc:
            response, status = refuse(503, "backbone_unavailable", f"the event was not published: {exc}",
                                      "backbone_unavailable")
            response.headers["Retry-After"] = "1"
            return response, status
        if published is None:
            return jsonify({"id": None, "dropped": True}), 202
        return jsonify({"id": published.id, "channel": published.channel}), 202

    app.register_blueprint(blueprint)
