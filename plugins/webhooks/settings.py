"""The ``[sinks.webhooks]`` configuration: declared keys, their checks, and endpoint parsing.

Every key is declared here so a typo is a start-up error naming the key (relay/config.py).
Durations are seconds (floats allowed, so tests can use short schedules).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from typing import Any

from relay.api import REDIS_URL_SCHEMES, Option, Section, check_networks

SECTION = "sinks.webhooks"
ENDPOINTS_SECTION = "sinks.webhooks.endpoints"
SECRET_PREFIX = "whsec_"
DEFAULT_SCHEDULE = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]  # Svix's: 8 attempts over ~27.5 h


def check_secret(secret: str) -> str | None:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 to 64 random bytes."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        return "must look like 'whsec_<base64>' (Standard Webhooks secret format)"
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return "the part after 'whsec_' is not valid base64"
    if not 24 <= len(raw) <= 64:
        return f"decodes to {len(raw)} bytes; use 24 to 64 random bytes"
    return None


def check_url(url: str) -> str | None:
    if not isinstance(url, str) or not url:
        return "url is required"
    # The messages do not repeat the URL: it may carry credentials, and they end up in logs.
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL (scheme found: {parts.scheme!r})"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials before the host (user:password@)"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has an invalid port"
    if not url.isascii() or any(ord(c) < 33 or c == "\x7f" for c in url):
        return "must be ASCII without spaces or control characters (percent-encode them; punycode for hosts)"
    return None


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of an endpoint URL, for places anyone may read (/healthz, /readyz,
    logs): the path and query string often carry credentials (``?token=…``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _check_schedule(schedule: list) -> str | None:
    if not schedule:
        return "needs at least one entry (the delay before the first attempt)"
    if any(delay < 0 for delay in schedule):
        return "delays must be 0 or more seconds"
    return None


MIN_ADMIN_TOKEN_BYTES = 32


def _check_admin_token(token: str) -> str | None:
    # The token guards secrets and replays: a short one can be guessed over HTTP.
    size = len(token.encode("utf-8"))
    if token and size < MIN_ADMIN_TOKEN_BYTES:
        return (f"is {size} byte(s) long; use at least {MIN_ADMIN_TOKEN_BYTES} random bytes (e.g. the output of "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'), or leave it empty to turn the "
                "admin API off")
    return None


def _check_store(store: str) -> str | None:
    if store in ("", "sqlite") or store.startswith(("sqlite:///", *REDIS_URL_SCHEMES)):
        return None
    return f"{store!r}: use 'redis://host:port/db', 'sqlite:///path/file.db', or leave it empty (SQLite in data_dir)"


def _check_endpoints(endpoints: list[dict]) -> str | None:
    problems, seen = [], set()
    for index, endpoint in enumerate(endpoints):
        checks = [("url", check_url(endpoint["url"])), ("secret", check_secret(endpoint["secret"]))]
        checks += [("previous_secrets", check_secret(s)) for s in endpoint["previous_secrets"]]
        problems += [f"[{index}].{key}: {problem}" for key, problem in checks if problem]
        if not endpoint["channels"]:
            problems.append(f"[{index}].channels: must name at least one channel or glob (e.g. ['demo'] or ['*'])")
        if endpoint["url"]:
            endpoint_id = config_endpoint_id(endpoint)
            if endpoint_id in seen:
                problems.append(f"[{index}].id: duplicate endpoint id {endpoint_id!r} (set a distinct 'id')")
            seen.add(endpoint_id)
    return "; ".join(problems) or None


def config_endpoint_id(endpoint: dict[str, Any]) -> str:
    """A config endpoint's id: its ``id`` key, else derived from its URL (stable across restarts
    and identical in every worker, which the one-delivery-per-webhook claim relies on)."""
    if endpoint.get("id"):
        return endpoint["id"]
    return "cfg_" + hashlib.sha256(endpoint["url"].encode()).hexdigest()[:16]


ENDPOINT_OPTIONS = Section(ENDPOINTS_SECTION, (
    Option("id", str, "", "stable endpoint id (default: derived from the URL); keep it when the URL changes"),
    Option("url", str, "", "where deliveries are POSTed (http:// or https://)"),
    Option("secret", str, "", "signing secret, 'whsec_' + base64 of 24-64 random bytes"),
    Option("previous_secrets", list, [], "old secrets still signed with during a rotation"),
    Option("channels", list, [], "channel names or globs (fnmatch: 'orders.*', '*') this endpoint receives"),
    Option("events", list, [], "event names or globs to send; empty sends every event"),
    Option("description", str, "", "free text shown in the admin API"),
    Option("max_concurrency", int, 0, "in-flight deliveries to this endpoint per worker (0: the section's)",
           min=0),
))

SECTIONS = [Section(SECTION, (
    Option("retry_schedule", list, list(DEFAULT_SCHEDULE),
           "seconds to wait before each attempt (first entry: before the first); its length is the "
           "number of attempts", item=float, check=_check_schedule),
    Option("jitter", float, 0.2, "random spread applied to each retry delay (0.2 = ±20 %)", min=0),
    Option("timeout", float, 15.0, "seconds one attempt may take: connect, send, answer",
           env="RELAY_WEBHOOKS_TIMEOUT", min=0.05),
    Option("max_concurrency", int, 10, "in-flight deliveries per endpoint per worker", min=1),
    Option("max_retry_after", float, 3600.0, "largest Retry-After honoured, in seconds (larger is capped)",
           min=0),
    Option("allow_networks", list, [], "SSRF allow-list: CIDR networks that may be delivered to even "
           "though private, loopback, link-local…", env="RELAY_WEBHOOKS_ALLOW_NETWORKS",
           check=check_networks),
    Option("store", str, "", "'redis://…' for a Redis store, else SQLite: 'sqlite:///path' or empty for "
           "data_dir/webhooks.sqlite3", env="RELAY_WEBHOOKS_STORE", check=_check_store),
    Option("key_prefix", str, "relay:webhooks", "prefix of every Redis key of the store"),
    Option("admin_token", str, "", "bearer token of the /webhooks admin API, at least 32 bytes; empty turns the "
           "API off", env="RELAY_WEBHOOKS_ADMIN_TOKEN", check=_check_admin_token),
    Option("disable_after", float, 5 * 86400.0, "seconds of continuous failure after which an endpoint is "
           "disabled", min=0),
    Option("response_max_bytes", int, 20000, "bytes of each response body kept in the attempt log", min=0),
    Option("retention", float, 7 * 86400.0, "seconds finished deliveries and attempts are kept (for replay)",
           min=60),
    Option("secret_rotation_grace", float, 86400.0, "seconds an old secret keeps signing after a rotation "
           "through the API", min=0),
    Option("poll_interval", float, 1.0, "seconds between looks for due retries (new events start at once)",
           min=0.01),
    Option("user_agent", str, "relay-webhooks/1", "User-Agent header of deliveries"),
    Option("endpoints", list, [], "endpoints from the configuration (the admin API adds more)",
           item=ENDPOINT_OPTIONS, check=_check_endpoints),
), "The webhook sink: signed (Standard Webhooks), durable, retried deliveries.")]
