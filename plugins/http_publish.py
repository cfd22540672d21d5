"""HTTP publishing: ``POST /events/<channel>`` with ``{"event": …, "data": …, "id": …}``.

Answers ``202 {"id": …}`` once the event is in the backbone, or a JSON error saying what was
wrong: ``400`` for a body that is not UTF-8 JSON, ``413`` over ``max_body_size``, ``422`` for a
JSON body of the wrong shape. A rejected request publishes nothing.
"""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, request

from relay import hookimpl
from relay.event import Event, InvalidEvent, check_name

FIELDS = ("event", "data", "id")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _error(status: int, error: str, message: str):
    return jsonify({"error": error, "message": message}), status


@hookimpl
def relay_init_app(app, relay):
    blueprint = Blueprint("http_publish", __name__)

    @blueprint.post("/events/<channel>")
    def publish(channel: str):
        body = request.get_data(cache=False)  # over max_body_size: 413 before we see it
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _error(400, "invalid_body", f"the body is not UTF-8: {exc}")
        try:
            message = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            return _error(400, "invalid_json", f"the body is not valid JSON: {exc}")
        if not isinstance(message, dict):
            return _error(422, "invalid_event", f"the body must be a JSON object, got {type(message).__name__}")
        unknown = sorted(set(message) - set(FIELDS))
        if unknown:
            return _error(422, "invalid_event", f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
        if "event" not in message:
            return _error(422, "invalid_event", "event: is required (the SSE event name)")
        try:
            check_name("channel", channel)
            event = Event(channel, message["event"], message.get("data"), id=message.get("id"), source="http")
        except InvalidEvent as exc:
            return _error(422, "invalid_event", str(exc))
        published = relay.publish(event)
        if published is None:
            return jsonify({"id": None, "dropped": True}), 202
        return jsonify({"id": published.id, "channel": published.channel}), 202

    app.register_blueprint(blueprint)
