"""The admin API under ``/webhooks``: endpoints, attempts, dead letters, replay.

Registered only when ``admin_token`` is set; every request needs ``Authorization: Bearer
<admin_token>``. Endpoints from the configuration file can be read, enabled and disabled here,
but their settings belong to the file (changing them answers 409).
"""

from __future__ import annotations

import hmac
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request

from plugins.webhooks.model import DEAD, PENDING, STATUSES, Endpoint
from plugins.webhooks.settings import check_secret, check_url
from plugins.webhooks.signing import new_secret
from plugins.webhooks.ssrf import RefusedAddress

MAX_LIST = 1000
REPLAY_LIMIT = 100_000  # deliveries one replay call may requeue
EDITABLE = ("url", "channels", "events", "description", "max_concurrency")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def parse_time(value: Any, field: str = "since") -> float:
    """Seconds since the epoch from a number or an RFC 3339 / ISO 8601 text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(422, "invalid_request", f"{field}: {value!r} is not RFC 3339 or epoch seconds") from None
        if moment.tzinfo is None:
            raise ApiError(422, "invalid_request", f"{field}: {value!r} needs a time zone (e.g. 'Z')")
        return moment.timestamp()
    raise ApiError(422, "invalid_request", f"{field}: required, RFC 3339 time or epoch seconds")


def _strings(body: dict, key: str, required: bool) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(422, "invalid_request", f"{key}: required, a list of strings")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApiError(422, "invalid_request", f"{key}: must be a list of non-empty strings")
    return value


def _limit() -> int:
    try:
        return max(1, min(int(request.args.get("limit", 100)), MAX_LIST))
    except ValueError:
        raise ApiError(422, "invalid_request", "limit: must be an integer") from None


def create_blueprint(sink) -> Blueprint:
    blueprint = Blueprint("webhooks_admin", __name__)
    token = sink.settings["admin_token"].encode()
    store = sink.store

    @blueprint.before_request
    def require_admin_token():
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            response = jsonify({"error": "unauthorized", "message": "send Authorization: Bearer <admin_token>"})
            response.headers["WWW-Authenticate"] = 'Bearer realm="relay webhooks"'
            return response, 401
        return None

    @blueprint.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify({"error": exc.error, "message": exc.message}), exc.status

    def body() -> dict:
        data = request.get_json(silent=True, force=True)
        if data is None and request.get_data():
            raise ApiError(400, "invalid_json", "the body is not valid JSON")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_request", "the body must be a JSON object")
        return data

    def endpoint_or_404(endpoint_id: str) -> Endpoint:
        endpoint = store.get_endpoint(endpoint_id)
        if endpoint is None:
            raise ApiError(404, "not_found", f"no webhook endpoint {endpoint_id!r}")
        return endpoint

    def editable(endpoint: Endpoint) -> None:
        if endpoint.origin == "config":
            raise ApiError(409, "config_endpoint", f"{endpoint.id} comes from the configuration file; "
                                                   "change it there (enable and disable work here)")

    def apply(endpoint: Endpoint, data: dict, creating: bool) -> None:
        unknown = sorted(set(data) - set(EDITABLE) - ({"secret", "enabled", "id"} if creating else set()))
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s) {', '.join(unknown)}; "
                                                   f"allowed: {', '.join(EDITABLE)}")
        if "url" in data or creating:
            problem = check_url(data.get("url", ""))
            if problem:
                raise ApiError(422, "invalid_request", f"url: {problem}")
            try:
                sink.policy.check_literal(urlsplit(data["url"]).hostname)
            except RefusedAddress as exc:
                raise ApiError(422, "refused_address", f"url: {exc}") from None
            endpoint.url = data["url"]
        channels = _strings(data, "channels", creating)
        if channels is not None:
            if not channels:
                raise ApiError(422, "invalid_request", "channels: name at least one channel or glob")
            endpoint.channels = channels
        events = _strings(data, "events", False)
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

    @blueprint.get("/webhooks")
    def list_endpoints():
        return jsonify({"endpoints": [e.public() for e in store.list_endpoints()]})

    @blueprint.post("/webhooks")
    def create_endpoint():
        data = body()
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
        apply(endpoint, data, creating=True)
        store.save_endpoint(endpoint)
        sink.changed()
        return jsonify({**endpoint.public(), "secret": secret}), 201

    @blueprint.get("/webhooks/<endpoint_id>")
    def get_endpoint(endpoint_id: str):
        return jsonify(endpoint_or_404(endpoint_id).public())

    @blueprint.route("/webhooks/<endpoint_id>", methods=["PATCH", "PUT"])
    def update_endpoint(endpoint_id: str):
        endpoint = endpoint_or_404(endpoint_id)
        editable(endpoint)
        apply(endpoint, body(), creating=False)
        store.save_endpoint(endpoint)
        sink.changed()
        return jsonify(store.get_endpoint(endpoint_id).public())

    @blueprint.delete("/webhooks/<endpoint_id>")
    def delete_endpoint(endpoint_id: str):
        editable(endpoint_or_404(endpoint_id))
        store.delete_endpoint(endpoint_id)
        sink.changed()
        return "", 204

    @blueprint.post("/webhooks/<endpoint_id>/enable")
    def enable(endpoint_id: str):
        endpoint_or_404(endpoint_id)
        store.set_enabled(endpoint_id, True)
        sink.changed()
        return jsonify(store.get_endpoint(endpoint_id).public())

    @blueprint.post("/webhooks/<endpoint_id>/disable")
    def disable(endpoint_id: str):
        endpoint_or_404(endpoint_id)
        store.set_enabled(endpoint_id, False, "disabled through the API")
        sink.changed()
        return jsonify(store.get_endpoint(endpoint_id).public())

    @blueprint.get("/webhooks/<endpoint_id>/secret")
    def get_secret(endpoint_id: str):
        endpoint = endpoint_or_404(endpoint_id)
        return jsonify({"secret": endpoint.secret, "signing_secrets": endpoint.signing_secrets()})

    @blueprint.post("/webhooks/<endpoint_id>/rotate-secret")
    def rotate_secret(endpoint_id: str):
        endpoint = endpoint_or_404(endpoint_id)
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

    @blueprint.get("/webhooks/<endpoint_id>/attempts")
    def attempts(endpoint_id: str):
        endpoint_or_404(endpoint_id)
        found = store.attempts(endpoint_id, request.args.get("delivery"), _limit())
        return jsonify({"attempts": [a.public() for a in found]})

    @blueprint.get("/webhooks/<endpoint_id>/deliveries")
    def deliveries(endpoint_id: str):
        endpoint_or_404(endpoint_id)
        status = request.args.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid_request", f"status: one of {', '.join(STATUSES)}")
        since = parse_time(request.args["since"]) if "since" in request.args else None
        found = store.deliveries(endpoint_id, status, since, _limit())
        return jsonify({"deliveries": [d.public() for d in found]})

    @blueprint.post("/webhooks/<endpoint_id>/replay")
    def replay(endpoint_id: str):
        endpoint_or_404(endpoint_id)
        since = parse_time(body().get("since"))
        ids = [d.id for d in store.deliveries(endpoint_id, None, since, REPLAY_LIMIT) if d.status != PENDING]
        count = store.requeue(ids, time.time())
        sink.wake.set()
        return jsonify({"requeued": count, "since": since})

    @blueprint.get("/webhooks/dead-letters")
    def dead_letters():
        found = store.deliveries(request.args.get("endpoint"), DEAD, None, _limit())
        return jsonify({"dead_letters": [d.public() for d in found]})

    @blueprint.post("/webhooks/dead-letters/resend")
    def resend_dead_letters():
        data = body()
        ids = _strings(data, "ids", False)
        if ids is None:
            endpoint = data.get("endpoint")
            if endpoint is not None and not isinstance(endpoint, str):  # the store would fail with a 500
                raise ApiError(422, "invalid_request", "endpoint: must be an endpoint id (a string)")
            ids = [d.id for d in store.deliveries(endpoint, DEAD, None, REPLAY_LIMIT)]
        count = store.requeue(ids, time.time())
        sink.wake.set()
        return jsonify({"requeued": count})

    @blueprint.get("/webhooks/deliveries/<delivery_id>")
    def get_delivery(delivery_id: str):
        delivery = store.get_delivery(delivery_id)
        if delivery is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id!r}")
        tries = store.attempts(delivery.endpoint_id, delivery_id, MAX_LIST)
        return jsonify({**delivery.public(), "attempt_log": [a.public() for a in tries]})

    @blueprint.post("/webhooks/deliveries/<delivery_id>/resend")
    def resend(delivery_id: str):
        if store.get_delivery(delivery_id) is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id!r}")
        count = store.requeue([delivery_id], time.time())
        sink.wake.set()
        return jsonify({"requeued": count})

    return blueprint
