"""The admin API under ``/webhooks``: endpoints, attempts, dead letters, replay.

Registered only when ``admin_token`` is set; every request needs ``Authorization: Bearer
<admin_token>``. Endpoints from the configuration file can be read, enabled and disabled here,
but their settings belong to the file (changing them answers 409).

The routes are in :mod:`plugins.webhooks.routes`, a function per resource (what they share in
:mod:`plugins.webhooks.admin`); this module puts them on one blueprint behind the token.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from plugins.webhooks.admin import ApiError, parse_time
from plugins.webhooks.routes import ROUTES

__all__ = ["ApiError", "create_blueprint", "parse_time"]


def create_blueprint(sink) -> Blueprint:
    blueprint = Blueprint("webhooks_admin", __name__)
    token = sink.settings["admin_token"].encode()

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

    for register in ROUTES:
        register(blueprint, sink)
    return blueprint
