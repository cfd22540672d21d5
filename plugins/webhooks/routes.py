"""The admin API's routes, a function per resource, each registering its routes on the blueprint
:func:`plugins.webhooks.api.create_blueprint` made (behind the admin token):

- :func:`endpoint_routes`: the endpoints (list, create, read, change, delete, enable, disable)
- :func:`secret_routes`: an endpoint's signing secrets (read, rotate)
- :func:`delivery_routes`: what was sent (deliveries, attempts, dead letters, one delivery)
- :func:`resend_routes`: sending again under the same webhook-ids (replay since a time, dead
  letters, one delivery)

What they share (the error answer, request parsing, lookups) is in :mod:`~plugins.webhooks.admin`.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request

from plugins.webhooks.admin import (
    MAX_LIST,
    REPLAY_LIMIT,
    ApiError,
    body,
    editable,
    endpoint_or_404,
    limit,
    parse_time,
    requeue,
    strings,
)
from plugins.webhooks.model import DEAD, PENDING, STATUSES, Endpoint
from plugins.webhooks.settings import check_secret, check_url
from plugins.webhooks.signing import new_secret
from plugins.webhooks.ssrf import AddressPolicy, RefusedAddress

EDITABLE = ("url", "channels", "events", "description", "max_concurrency")


def apply(endpoint: Endpoint, data: dict, creating: bool, policy: AddressPolicy) -> None:
    """Check the settings in ``data`` and set them on ``endpoint`` (all required ones when
    ``creating``); the URL must pass ``policy``'s check of a literal address."""
    unknown = sorted(set(data) - set(EDITABLE) - ({"secret", "enabled", "id"} if creating else set()))
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field(s) {', '.join(unknown)}; "
                                               f"allowed: {', '.join(EDITABLE)}")
    if "url" in data or creating:
        problem = check_url(data.get("url", ""))
        if problem:
            raise ApiError(422, "invalid_request", f"url: {problem}")
        try:
            policy.check_literal(urlsplit(data["url"]).hostname)
        except RefusedAddress as exc:
            raise ApiError(422, "refused_address", f"url: {exc}") from None
        endpoint.url = data["url"]
    channels = strings(data, "channels", creating)
    if channels is not None:
        if not channels:
            raise ApiError(422, "invalid_request", "channels: name at least one channel or glob")
        endpoint.channels = channels
    events = strings(data, "events", False)
    if events is not None:
        endpoint.events = events
    if "description" in data:
        if not isinstance(data["description"], str):
            raise ApiError(422, "invalid_request", "description: must be a string")
        endpoint.description = data["description"]
    if "max_concurrency" in data:
        value = data["max_concurrency"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(422, "invalid_request", "max_concurrency: must be an integer, 0 or more")
        endpoint.max_concurrency = value
    endpoint.updated_at = time.time()


def new_endpoint(data: dict, store) -> tuple[Endpoint, str]:
    """An endpoint (not yet checked by :func:`apply`) and its secret from a create request."""
    secret = data.get("secret") or new_secret()
    problem = check_secret(secret)
    if problem:
        raise ApiError(422, "invalid_request", f"secret: {problem}")
    endpoint_id = data.get("id") or Endpoint.new_id()
    if not isinstance(endpoint_id, str) or not endpoint_id.replace("_", "").replace("-", "").isalnum() \
            or len(endpoint_id) > 64:
        raise ApiError(422, "invalid_request", "id: letters, digits, '_' and '-', at most 64")
    if store.get_endpoint(endpoint_id) is not None:
        raise ApiError(409, "exists", f"endpoint {endpoint_id!r} exists")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ApiError(422, "invalid_request", "enabled: must be true or false")
    endpoint = Endpoint(id=endpoint_id, url="", secret=secret, channels=[], origin="api", enabled=enabled,
                        disabled_reason="" if enabled else "disabled through the API")
    return endpoint, secret


def endpoint_routes(blueprint: Blueprint, sink) -> None:
    store = sink.store

    @blueprint.get("/webhooks")
    def list_endpoints():
        return jsonify({"endpoints": [e.public() for e in store.list_endpoints()]})

    @blueprint.post("/webhooks")
    def create_endpoint():
        data = body()
        endpoint, secret = new_endpoint(data, store)
        apply(endpoint, data, True, sink.policy)
        store.save_endpoint(endpoint)
        sink.changed()
        return jsonify({**endpoint.public(), "secret": secret}), 201

    @blueprint.get("/webhooks/<endpoint_id>")
    def get_endpoint(endpoint_id: str):
        return jsonify(endpoint_or_404(store, endpoint_id).public())

    @blueprint.route("/webhooks/<endpoint_id>", methods=["PATCH", "PUT"])
    def update_endpoint(endpoint_id: str):
        endpoint = endpoint_or_404(store, endpoint_id)
        editable(endpoint)
        apply(endpoint, body(), False, sink.policy)
        store.save_endpoint(endpoint)
        sink.changed()
        return jsonify(store.get_endpoint(endpoint_id).public())

    @blueprint.delete("/webhooks/<endpoint_id>")
    def delete_endpoint(endpoint_id: str):
        editable(endpoint_or_404(store, endpoint_id))
        store.delete_endpoint(endpoint_id)
        sink.changed()
        return "", 204

    def set_enabled(endpoint_id: str, enabled: bool):
        endpoint_or_404(store, endpoint_id)
        store.set_enabled(endpoint_id, enabled, "" if enabled else "disabled through the API")
        sink.changed()
        return jsonify(store.get_endpoint(endpoint_id).public())

    @blueprint.post("/webhooks/<endpoint_id>/enable")
    def enable(endpoint_id: str):
        return set_enabled(endpoint_id, True)

    @blueprint.post("/webhooks/<endpoint_id>/disable")
    def disable(endpoint_id: str):
        return set_enabled(endpoint_id, False)


def secret_routes(blueprint: Blueprint, sink) -> None:
    store = sink.store

    @blueprint.get("/webhooks/<endpoint_id>/secret")
    def get_secret(endpoint_id: str):
        endpoint = endpoint_or_404(store, endpoint_id)
        return jsonify({"secret": endpoint.secret, "signing_secrets": endpoint.signing_secrets()})

    @blueprint.post("/webhooks/<endpoint_id>/rotate-secret")
    def rotate_secret(endpoint_id: str):
        endpoint = endpoint_or_404(store, endpoint_id)
        editable(endpoint)
        secret = body().get("secret") or new_secret()
        problem = check_secret(secret)
        if problem:
            raise ApiError(422, "invalid_request", f"secret: {problem}")
        now = time.time()
        grace = sink.settings["secret_rotation_grace"]
        # The old secret keeps signing (a second v1 signature) until the receiver has switched.
        endpoint.previous_secrets = [[s, exp] for s, exp in endpoint.previous_secrets if exp is None or exp > now]
        if grace > 0:
            endpoint.previous_secrets.insert(0, [endpoint.secret, now + grace])
        endpoint.secret, endpoint.updated_at = secret, now
        store.save_endpoint(endpoint)
        sink.changed()
        return jsonify({"secret": secret, "signing_secrets": endpoint.signing_secrets(now)})


def delivery_routes(blueprint: Blueprint, sink) -> None:
    store = sink.store

    @blueprint.get("/webhooks/<endpoint_id>/attempts")
    def attempts(endpoint_id: str):
        endpoint_or_404(store, endpoint_id)
        found = store.attempts(endpoint_id, request.args.get("delivery"), limit())
        return jsonify({"attempts": [a.public() for a in found]})

    @blueprint.get("/webhooks/<endpoint_id>/deliveries")
    def deliveries(endpoint_id: str):
        endpoint_or_404(store, endpoint_id)
        status = request.args.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid_request", f"status: one of {', '.join(STATUSES)}")
        since = parse_time(request.args["since"]) if "since" in request.args else None
        found = store.deliveries(endpoint_id, status, since, limit())
        return jsonify({"deliveries": [d.public() for d in found]})

    @blueprint.get("/webhooks/dead-letters")
    def dead_letters():
        found = store.deliveries(request.args.get("endpoint"), DEAD, None, limit())
        return jsonify({"dead_letters": [d.public() for d in found]})

    @blueprint.get("/webhooks/deliveries/<delivery_id>")
    def get_delivery(delivery_id: str):
        delivery = store.get_delivery(delivery_id)
        if delivery is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id!r}")
        tries = store.attempts(delivery.endpoint_id, delivery_id, MAX_LIST)
        return jsonify({**delivery.public(), "attempt_log": [a.public() for a in tries]})


def resend_routes(blueprint: Blueprint, sink) -> None:
    store = sink.store

    @blueprint.post("/webhooks/<endpoint_id>/replay")
    def replay(endpoint_id: str):
        endpoint_or_404(store, endpoint_id)
        since = parse_time(body().get("since"))
        ids = [d.id for d in store.deliveries(endpoint_id, None, since, REPLAY_LIMIT) if d.status != PENDING]
        return jsonify({"requeued": requeue(sink, ids), "since": since})

    @blueprint.post("/webhooks/dead-letters/resend")
    def resend_dead_letters():
        data = body()
        ids = strings(data, "ids", False)
        if ids is None:
            endpoint = data.get("endpoint")
            if endpoint is not None and not isinstance(endpoint, str):  # the store would fail with a 500
                raise ApiError(422, "invalid_request", "endpoint: must be an endpoint id (a string)")
            ids = [d.id for d in store.deliveries(endpoint, DEAD, None, REPLAY_LIMIT)]
        return jsonify({"requeued": requeue(sink, ids)})

    @blueprint.post("/webhooks/deliveries/<delivery_id>/resend")
    def resend(delivery_id: str):
        if store.get_delivery(delivery_id) is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id!r}")
        return jsonify({"requeued": requeue(sink, [delivery_id])})


ROUTES = (endpoint_routes, secret_routes, delivery_routes, resend_routes)
