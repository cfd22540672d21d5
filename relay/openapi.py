"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

The document describes the routes this app actually serves, with this configuration: each
operation below is included only when the app has registered its route and method (the webhook
admin API exists only with ``admin_token``, the demo can be disabled, …). Plugins describe
their own routes with the ``relay_openapi_paths`` hook; its path items are merged in the same
way. ``tests/test_openapi.py`` runs schemathesis against a running relay to keep it true, and
checks that every route the app serves is described.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from flask import Flask

import relay
from relay.event import MAX_DEPTH

MAX_NAME = 256  # relay.event.check_name: ids, event names and channels
log = logging.getLogger("relay.openapi")
IGNORED_ENDPOINTS = {"static"}  # Flask's own /static/<path>: relay has no such folder, always 404

# -- shared schemas -------------------------------------------------------------------------------

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error answer: a machine-readable code and a message naming the field or limit.",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string", "examples": ["invalid_event"]},
                       "message": {"type": "string"}},
    },
    "PublishRequest": {
        "type": "object",
        "required": ["event"],
        "additionalProperties": False,
        "properties": {
            "event": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": "^[^\\r\\n\\x00]*$",
                      "description": "the SSE event name (addEventListener's); no CR, LF or NUL"},
            "data": {"description": f"any JSON value, nested at most {MAX_DEPTH} levels; strings are sent as they "
                                    "are, other values serialised compactly"},
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": "^[^\\r\\n\\x00]*$",
                   "description": "a publisher-chosen id, meaningful on this channel only; not of the forms "
                                  "relay assigns (<digits>-<digits>, kafka:…). Without it relay assigns one"},
        },
    },
    "PublishAccepted": {
        "type": "object",
        "description": "The event is in the backbone (`dropped`: a plugin's relay_transform_event dropped it).",
        "required": ["id"],
        "properties": {"id": {"type": ["string", "null"]}, "channel": {"type": "string"},
                       "dropped": {"type": "boolean"}},
    },
    "Component": {
        "type": "object",
        "required": ["state"],
        "properties": {"state": {"type": "string", "examples": ["up", "down", "starting", "degraded"]}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "time", "components"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "time": {"type": "number", "description": "seconds since the epoch"},
            "components": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Component"}},
            "bus": {"type": "object"},
            "backbone": {"type": "object"},
            "counters": {"type": "object"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "components"],
        "properties": {
            "ready": {"type": "boolean"},
            "components": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Component"}},
        },
    },
    "Presence": {
        "type": "object",
        "required": ["channel", "subscribers"],
        "properties": {"channel": {"type": "string"}, "subscribers": {"type": "integer", "minimum": 0}},
    },
    "PresenceList": {
        "type": "object",
        "required": ["channels"],
        "properties": {"channels": {"type": "array", "items": {"$ref": "#/components/schemas/Presence"},
                                    "description": "channels with at least one subscriber, sorted by name"}},
    },
    "WebhookEndpoint": {
        "type": "object",
        "required": ["id", "url", "channels", "events", "enabled", "origin"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "channels": {"type": "array", "items": {"type": "string"}},
            "events": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"},
            "max_concurrency": {"type": "integer", "minimum": 0},
            "origin": {"enum": ["api", "config"], "description": "config endpoints are changed in the file"},
            "enabled": {"type": "boolean"},
            "disabled_reason": {"type": "string"},
            "failing_since": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": ["string", "null"], "format": "date-time"},
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
            "rotating": {"type": "boolean", "description": "an old secret still signs (rotation grace)"},
        },
    },
    "WebhookEndpointInput": {
        "type": "object",
        "description": "Fields of an endpoint; `id`, `secret` and `enabled` only when creating it.",
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "description": "http:// or https://, no credentials"},
            "channels": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                         "description": "channel names or globs"},
            "events": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "description": {"type": "string"},
            "max_concurrency": {"type": "integer", "minimum": 0},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "secret": {"type": "string", "description": "whsec_ + base64 of 24 to 64 bytes; generated when absent"},
            "enabled": {"type": "boolean"},
        },
    },
    "WebhookSecrets": {
        "type": "object",
        "required": ["secret", "signing_secrets"],
        "properties": {"secret": {"type": "string"},
                       "signing_secrets": {"type": "array", "items": {"type": "string"},
                                           "description": "the current secret first, then old ones still signing"}},
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "endpoint_id", "event_id", "channel", "status"],
        "properties": {
            "id": {"type": "string", "description": "the webhook-id"},
            "endpoint_id": {"type": "string"},
            "event_id": {"type": "string"},
            "channel": {"type": "string"},
            "event_type": {"type": "string"},
            "body": {"type": "string", "description": "the exact body sent"},
            "created_at": {"type": ["string", "null"]},
            "status": {"enum": ["pending", "succeeded", "dead", "cancelled"]},
            "attempts": {"type": "integer"},
            "next_attempt_at": {"type": ["string", "null"]},
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": "string"},
            "completed_at": {"type": ["string", "null"]},
        },
    },
    "WebhookAttempt": {
        "type": "object",
        "required": ["delivery_id", "endpoint_id", "attempt", "outcome"],
        "properties": {
            "delivery_id": {"type": "string"}, "endpoint_id": {"type": "string"},
            "attempt": {"type": "integer"}, "started_at": {"type": "string"},
            "status_code": {"type": ["integer", "null"]}, "latency_ms": {"type": "number"},
            "error": {"type": "string"}, "response": {"type": "string", "description": "truncated"},
            "outcome": {"enum": ["succeeded", "retry", "dead"]},
        },
    },
    "RotateSecret": {"type": "object", "properties": {"secret": {"type": "string",
                                                                 "description": "generated when absent"}}},
    "Replay": {"type": "object", "required": ["since"],
               "properties": {"since": {"type": ["string", "number"],
                                        "description": "RFC 3339 time with a zone, or epoch seconds"}}},
    "Resend": {"type": "object", "description": "`ids`, else every dead letter of `endpoint`, else all",
               "properties": {"ids": {"type": "array", "items": {"type": "string", "minLength": 1}},
                              "endpoint": {"type": "string"}}},
    "Requeued": {"type": "object", "required": ["requeued"], "properties": {"requeued": {"type": "integer"}}},
    "DemoPoll": {
        "type": "object",
        "required": ["room", "poll", "totals", "total"],
        "properties": {
            "room": {"type": "string"}, "poll": {"type": "string"},
            "totals": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "total": {"type": "integer", "minimum": 0},
            "your_vote": {"type": ["string", "null"], "description": "what this browser voted, if it did"},
        },
    },
}


# -- building blocks ------------------------------------------------------------------------------

def _json(schema: dict | str, description: str) -> dict:
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(**statuses: str) -> dict:
    """``{"400": <Error answer>, …}`` from ``_400="why"`` keywords."""
    return {code.lstrip("_"): _json("Error", why) for code, why in statuses.items()}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "schema": {"type": "string"}}}
NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": "^[^/\\r\\n\\x00]+$"}
CHANNEL = {"name": "channel", "in": "path", "required": True, "schema": NAME,
           "description": "the channel: 1 to 256 characters of UTF-8 without CR, LF or NUL (percent-encode "
                          "what a URL needs)"}
SUBSCRIBER_AUTH = [{}, {"bearer": []}, {"cookie": []}, {"access_token": []}]  # {}: open without [auth]
PUBLISHER_AUTH = [{}, {"bearer": []}, {"cookie": []}]
ADMIN_AUTH = [{"admin_token": []}]
AUTH_ERRORS = {"_401": "no usable token: missing, malformed, expired or wrongly signed",
               "_403": "the token does not cover the channel (or a cookie token from another origin)"}
BODY_ERRORS = {"_408": "the body did not arrive whole within body_timeout (the connection is closed)",
               "_413": "the body is over max_body_size (the connection is closed)"}


def _with_headers(responses: dict, code: str, headers: dict) -> dict:
    responses[code] = {**responses[code], "headers": headers}
    return responses


def _stream(parameters: list) -> dict:
    """GET of a Server-Sent Events stream: one channel in the path, or several in the query."""
    parameters = parameters + [
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
         "description": "resume after this event id (what EventSource sends on reconnecting)"},
        {"name": "lastEventId", "in": "query", "schema": {"type": "string"},
         "description": "the same, for EventSource polyfills that cannot send headers"},
        {"name": "access_token", "in": "query", "schema": {"type": "string"},
         "description": "a token, for browsers (EventSource cannot send Authorization)"},
        {"name": "presence", "in": "query", "schema": {"enum": ["1"]},  # left out when presence is not served
         "description": "also send named `relay-presence` events `{\"channel\", \"subscribers\"}` (no id), "
                        "at most one per channel per second"},
    ]
    responses = {
        "200": {"description": "an endless text/event-stream: `retry:`, then any replay (preceded by a "
                               "`relay-missed` event when it is incomplete), then live events and `: heartbeat` "
                               "comments",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **_errors(_400="no channel, too many channels, or an invalid channel name", **AUTH_ERRORS,
                  _429="too many streams from this client address (max_connections_per_address)",
                  _503="this worker holds max_connections streams"),
    }
    _with_headers(responses, "429", RETRY_AFTER)
    _with_headers(responses, "503", RETRY_AFTER)
    return {"parameters": parameters, "security": SUBSCRIBER_AUTH, "tags": ["streaming"], "responses": responses}


def _admin(summary: str, ok: dict, *, code: str = "200", body: str | None = None,
           errors: tuple = ("404",), parameters: list | None = None) -> dict:
    """An operation of the webhook admin API (``plugins/webhooks/api.py``)."""
    known = {"400": "the body is not JSON", "404": "no such endpoint or delivery",
             "409": "the endpoint comes from the configuration file, or the id exists",
             "422": "a field is missing or invalid (the message names it)"}
    wanted = ("401", "422") + errors + (("400",) if body else ())
    responses = {code: ok}
    for status in sorted(set(wanted)):
        responses[status] = _json("Error", known.get(status, "send Authorization: Bearer <admin_token>"))
    if body:
        responses.update(_errors(**BODY_ERRORS))
    _with_headers(responses, "401", {"WWW-Authenticate": {"schema": {"type": "string"}}})
    operation: dict[str, Any] = {"summary": summary, "tags": ["webhooks"], "security": ADMIN_AUTH,
                                 "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{body}"}}}}
    return operation


ENDPOINT_ID = {"name": "endpoint_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]([A-Za-z0-9_-]{0,63})$",
                          "not": {"enum": ["dead-letters", "deliveries"]}}}
DELIVERY_ID = {"name": "delivery_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[^/]+$"}}
LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
         "description": "at most this many (100)"}


# -- the operations, keyed by Flask rule ----------------------------------------------------------

def builtin_paths(relay_runtime) -> dict[str, dict[str, dict]]:
    """What relay's core and built-in plugins serve, keyed by Flask rule and lower-case method."""
    core = relay_runtime.config.section("")
    endpoint = _json("WebhookEndpoint", "the endpoint (no secret)")
    options = list(relay_runtime.config.section("demo")["options"]) if _has_section(relay_runtime, "demo") else []
    poll_names = [{"name": "room", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}},
                  {"name": "poll", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}}]
    publish_responses = {
        "202": _json("PublishAccepted", "accepted: in the backbone and on its way to every subscriber"),
        **_errors(_400="the body is not UTF-8 JSON, or nests deeper than 32 levels; or the URL is not UTF-8",
                  **AUTH_ERRORS, **BODY_ERRORS,
                  _415="the Content-Type is not application/json",
                  _422="the JSON has the wrong shape (the message names the field)",
                  _429="over publish.rate for this token or address",
                  _503="the backbone is unavailable: nothing was published"),
    }
    _with_headers(publish_responses, "429", RETRY_AFTER)
    _with_headers(publish_responses, "503", RETRY_AFTER)
    return {
        "/healthz": {"get": {
            "summary": "Liveness, with every component's state", "tags": ["operations"],
            "responses": {"200": _json("Health", "always, while the process is alive")}}},
        "/readyz": {"get": {
            "summary": "Readiness: every source and the backbone up", "tags": ["operations"],
            "responses": {"200": _json("Ready", "ready"), "503": _json("Ready", "a component is down or starting")}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics, summed over every worker", "tags": ["operations"],
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "summary": "This document", "tags": ["operations"],
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                       "OpenAPI 3.1 for the routes this relay serves")}}},
        "/events/<channel>": {
            "post": {
                "summary": "Publish an event", "tags": ["publishing"], "security": PUBLISHER_AUTH,
                "parameters": [CHANNEL],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PublishRequest"}}},
                    "description": f"at most max_body_size ({core['max_body_size']} bytes), within body_timeout "
                                   f"({core['body_timeout']:g} s)"},
                "responses": publish_responses},
            "get": {"summary": "Stream one channel (Server-Sent Events)", **_stream([CHANNEL])},
        },
        "/events": {"get": {
            "summary": "Stream several channels (Server-Sent Events)",
            **_stream([{"name": "channel", "in": "query", "required": True, "style": "form", "explode": True,
                        "schema": {"type": "array", "minItems": 1,
                                   "maxItems": relay_runtime.config.section("sinks.sse")["max_channels"]
                                   if _has_section(relay_runtime, "sinks.sse") else 32,
                                   "items": NAME}}])}},
        "/channels/<channel>": {"get": {
            "summary": "Subscribers of a channel, over every worker and instance", "tags": ["presence"],
            "security": SUBSCRIBER_AUTH, "parameters": [CHANNEL],
            "responses": {"200": _json("Presence", "open streams subscribed to the channel (at most ~1 s stale)"),
                          **_errors(_400="an invalid channel name", **AUTH_ERRORS)}}},
        "/channels": {"get": {
            "summary": "Channels with subscribers", "tags": ["presence"], "security": SUBSCRIBER_AUTH,
            "responses": {"200": _json("PresenceList", "only channels the caller may subscribe to (none "
                                                       "without a token when [auth] is on, but public ones)")}}},
        # The webhook admin API: plugins/webhooks/api.py, only with sinks.webhooks.admin_token.
        "/webhooks": {
            "get": _admin("List webhook endpoints", _json({"type": "object", "required": ["endpoints"], "properties": {
                "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookEndpoint"}}}},
                "every endpoint"), errors=()),
            "post": _admin("Add a webhook endpoint", _json({"allOf": [
                {"$ref": "#/components/schemas/WebhookEndpoint"},
                {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}}]},
                "created; the only answer that shows the new secret"), code="201", body="WebhookEndpointInput",
                errors=("409",)),
        },
        "/webhooks/<endpoint_id>": {
            "get": _admin("Read an endpoint", endpoint, parameters=[ENDPOINT_ID]),
            "patch": _admin("Change an endpoint", endpoint, body="WebhookEndpointInput", errors=("404", "409"),
                            parameters=[ENDPOINT_ID]),
            "put": _admin("Change an endpoint (as PATCH)", endpoint, body="WebhookEndpointInput",
                          errors=("404", "409"), parameters=[ENDPOINT_ID]),
            "delete": _admin("Delete an endpoint", {"description": "deleted"}, code="204", errors=("404", "409"),
                             parameters=[ENDPOINT_ID]),
        },
        "/webhooks/<endpoint_id>/enable": {"post": _admin("Enable an endpoint", endpoint, parameters=[ENDPOINT_ID])},
        "/webhooks/<endpoint_id>/disable": {"post": _admin("Disable an endpoint", endpoint,
                                                           parameters=[ENDPOINT_ID])},
        "/webhooks/<endpoint_id>/secret": {"get": _admin(
            "Read an endpoint's signing secrets", _json("WebhookSecrets", "the secrets"), parameters=[ENDPOINT_ID])},
        "/webhooks/<endpoint_id>/rotate-secret": {"post": _admin(
            "Rotate the secret (the old one keeps signing for secret_rotation_grace)",
            _json("WebhookSecrets", "the new secret"), body="RotateSecret", errors=("404", "409"),
            parameters=[ENDPOINT_ID])},
        "/webhooks/<endpoint_id>/attempts": {"get": _admin(
            "Delivery attempts, newest first", _json({"type": "object", "required": ["attempts"], "properties": {
                "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookAttempt"}}}},
                "attempts"),
            parameters=[ENDPOINT_ID, LIMIT, {"name": "delivery", "in": "query", "schema": {"type": "string"}}])},
        "/webhooks/<endpoint_id>/deliveries": {"get": _admin(
            "Deliveries", _json({"type": "object", "required": ["deliveries"], "properties": {
                "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookDelivery"}}}},
                "deliveries"),
            parameters=[ENDPOINT_ID, LIMIT,
                        {"name": "status", "in": "query",
                         "schema": {"enum": ["pending", "succeeded", "dead", "cancelled"]}},
                        {"name": "since", "in": "query", "schema": {"type": "string"},
                         "description": "RFC 3339 time with a zone, or epoch seconds"}])},
        "/webhooks/<endpoint_id>/replay": {"post": _admin(
            "Send again every delivery since a time", _json({"type": "object", "required": ["requeued", "since"],
                                                            "properties": {"requeued": {"type": "integer"},
                                                                           "since": {"type": "number"}}},
                                                           "requeued"),
            body="Replay", parameters=[ENDPOINT_ID])},
        "/webhooks/dead-letters": {"get": _admin(
            "Dead letters", _json({"type": "object", "required": ["dead_letters"], "properties": {
                "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookDelivery"}}}},
                "deliveries that ran out of attempts"), errors=(),
            parameters=[LIMIT, {"name": "endpoint", "in": "query", "schema": {"type": "string"}}])},
        "/webhooks/dead-letters/resend": {"post": _admin(
            "Send dead letters again (by id, or every one of an endpoint, or all)", _json("Requeued", "requeued"),
            body="Resend", errors=())},
        "/webhooks/deliveries/<delivery_id>": {"get": _admin(
            "A delivery with its attempts", _json({"allOf": [
                {"$ref": "#/components/schemas/WebhookDelivery"},
                {"type": "object", "required": ["attempt_log"], "properties": {"attempt_log": {
                    "type": "array", "items": {"$ref": "#/components/schemas/WebhookAttempt"}}}}]}, "the delivery"),
            parameters=[DELIVERY_ID])},
        "/webhooks/deliveries/<delivery_id>/resend": {"post": _admin(
            "Send a delivery again", _json("Requeued", "requeued"), parameters=[DELIVERY_ID])},
        # The demo: plugins/demo/__init__.py.
        "/": {"get": {"summary": "The live reactions demo page", "tags": ["demo"],
                      "responses": {"200": {"description": "HTML", "content": {"text/html": {
                          "schema": {"type": "string"}}}}}}},
        "/demo/static/<path:filename>": {"get": {
            "summary": "The demo page's scripts, styles and images", "tags": ["demo"],
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                          "404": {"description": "no such file", "content": {"*/*": {"schema": {}}}}}}},
        "/demo/api/config": {"get": {
            "summary": "The demo's settings", "tags": ["demo"],
            "responses": {"200": _json({"type": "object", "required": ["default_room", "options"], "properties": {
                "default_room": {"type": "string"}, "question": {"type": "string"},
                "options": {"type": "array", "items": {"type": "string"}},
                "channel_prefix": {"type": "string"}, "tallies": {"enum": ["memory", "redis"]}}},
                "the settings the page needs")}}},
        "/demo/api/rooms/<room>/polls/<poll>": {"get": {
            "summary": "A poll's totals", "tags": ["demo"], "security": SUBSCRIBER_AUTH, "parameters": poll_names,
            "responses": {"200": _json("DemoPoll", "the totals"),
                          **_errors(_400="an invalid room or poll name", **AUTH_ERRORS,
                                    _503="the tally store is unavailable")}}},
        "/demo/api/rooms/<room>/polls/<poll>/votes": {"post": {
            "summary": "Vote (once per browser per poll)", "tags": ["demo"], "security": PUBLISHER_AUTH,
            "parameters": poll_names,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["option"], "additionalProperties": False,
                "properties": {"option": {"enum": options, "description": "one of the poll's options"}}}}}},
            "responses": {"200": _json({"allOf": [{"$ref": "#/components/schemas/DemoPoll"}, {
                "type": "object", "properties": {"event_id": {"type": ["string", "null"]},
                                                 "warning": {"type": "string"}}}]},
                "counted (and announced with a `votes` event unless `warning` says otherwise)"),
                **_errors(_400="an invalid room or poll name, or a body that is not UTF-8 JSON", **AUTH_ERRORS,
                          **BODY_ERRORS, _409="this browser has voted in this poll already",
                          _415="the Content-Type is not application/json",
                          _422="not an object with one of the poll's options",
                          _503="the tally store is unavailable: not counted")}}},
    }


def _has_section(relay_runtime, name: str) -> bool:
    try:
        relay_runtime.config.section(name)
    except Exception:  # noqa: BLE001 - the sse plugin may be disabled
        return False
    return True


# -- the document ---------------------------------------------------------------------------------

def openapi_path(rule: str) -> str:
    """``/events/<channel>`` and ``/x/<path:name>`` as OpenAPI templates: ``/events/{channel}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def served(app: Flask) -> set[tuple[str, str]]:
    """(Flask rule, lower-case method) of every route the app serves, HEAD and OPTIONS aside."""
    return {(rule.rule, method.lower()) for rule in app.url_map.iter_rules() if rule.endpoint not in IGNORED_ENDPOINTS
            for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}


def document(app: Flask, relay_runtime) -> dict[str, Any]:
    """The OpenAPI 3.1 document of what ``app`` serves; built once per app."""
    cached = relay_runtime.extensions.get("openapi")
    if cached is None:
        cached = relay_runtime.extensions["openapi"] = build(app, relay_runtime)
    return cached


def build(app: Flask, relay_runtime) -> dict[str, Any]:
    routes = served(app)
    candidates = builtin_paths(relay_runtime)
    schemas = copy.deepcopy(SCHEMAS)
    for plugin, contributed in relay_runtime.call_each("relay_openapi_paths"):
        if contributed is not None and not isinstance(contributed, dict):
            log.error("plugin %s: relay_openapi_paths returned a %s, not a dict; ignored", plugin,
                      type(contributed).__name__)
            continue
        for rule, item in (contributed or {}).items():
            candidates.setdefault(rule, {}).update(copy.deepcopy(item))
    presence = any(rule.startswith("/channels") for rule, _ in routes)
    paths: dict[str, dict] = {}
    for rule, item in candidates.items():
        operations = {method: op for method, op in item.items() if (rule, method) in routes}
        if not presence:
            _drop_presence_parameter(operations)
        if operations:
            paths[openapi_path(rule)] = operations
    cookie = relay_runtime.config.section("auth")["cookie"] if _has_section(relay_runtime, "auth") else "relay_token"
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay", "version": relay.__version__,
                 "description": "Events from HTTP, Redis and Kafka to Server-Sent Events and webhooks. Every error "
                                "answer is JSON `{\"error\", \"message\"}`; a URL whose %-escapes are not UTF-8 gets "
                                "400 `invalid_request` on any route. This document lists what this relay "
                                "serves with its configuration and plugins."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "a token with a `relay` claim of channel globs (when [auth] has a key)"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": cookie,
                           "description": "the same token in a cookie, for browsers (publishing only from the "
                                          "relay's own origin or one in cors_origins)"},
                "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                                 "description": "the same token in the URL, for EventSource"},
                "admin_token": {"type": "http", "scheme": "bearer",
                                "description": "sinks.webhooks.admin_token, for the webhook admin API"},
            },
        },
        "tags": [{"name": name} for name in ("publishing", "streaming", "presence", "operations", "webhooks",
                                             "demo")],
    }


def _drop_presence_parameter(operations: dict) -> None:
    for operation in operations.values():
        if "parameters" in operation:
            operation["parameters"] = [p for p in operation["parameters"] if p.get("name") != "presence"]
