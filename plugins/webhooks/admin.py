"""What the admin API's routes (:mod:`~plugins.webhooks.routes`) share: the error answer, request
parsing, lookups."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from flask import request

from plugins.webhooks.model import Endpoint

MAX_LIST = 1000
REPLAY_LIMIT = 100_000  # deliveries one replay call may requeue


class ApiError(Exception):
    """Answered as ``{"error": error, "message": message}`` with ``status`` (the blueprint's
    error handler)."""

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


def strings(body: dict, key: str, required: bool) -> list[str] | None:
    """``body[key]`` as a list of non-empty strings; ``None`` when absent and not required."""
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(422, "invalid_request", f"{key}: required, a list of strings")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApiError(422, "invalid_request", f"{key}: must be a list of non-empty strings")
    return value


def limit() -> int:
    """The request's ``limit`` query parameter, 1 to :data:`MAX_LIST` (100 when absent)."""
    try:
        return max(1, min(int(request.args.get("limit", 100)), MAX_LIST))
    except ValueError:
        raise ApiError(422, "invalid_request", "limit: must be an integer") from None


def body() -> dict:
    """The request's JSON object body; ``{}`` when there is none."""
    data = request.get_json(silent=True, force=True)
    if data is None and request.get_data():
        raise ApiError(400, "invalid_json", "the body is not valid JSON")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return data


def endpoint_or_404(store, endpoint_id: str) -> Endpoint:
    endpoint = store.get_endpoint(endpoint_id)
    if endpoint is None:
        raise ApiError(404, "not_found", f"no webhook endpoint {endpoint_id!r}")
    return endpoint


def editable(endpoint: Endpoint) -> None:
    """Refuse (409) to change the settings of an endpoint that belongs to the configuration file."""
    if endpoint.origin == "config":
        raise ApiError(409, "config_endpoint", f"{endpoint.id} comes from the configuration file; "
                                               "change it there (enable and disable work here)")


def requeue(sink, ids: list[str]) -> int:
    """Send these deliveries again now (:meth:`~plugins.webhooks.store.Store.requeue`) and wake
    the dispatcher; returns how many were requeued."""
    count = sink.store.requeue(ids, time.time())
    sink.wake.set()
    return count
