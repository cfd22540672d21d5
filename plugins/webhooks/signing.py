"""Standard Webhooks payloads and signatures (https://www.standardwebhooks.com).

The body is built once, when the sink accepts the event, and stored as bytes: every attempt
sends exactly those bytes, so the signature always covers what goes on the wire. The signature
covers ``{webhook-id}.{webhook-timestamp}.{body}`` and the timestamp is the attempt's, so each
attempt is signed anew (receivers reject timestamps older than 5 minutes).

We sign with :mod:`hmac` rather than the ``standardwebhooks`` package: its ``sign`` takes a
``str`` and re-encodes it, and signs with one secret; here we sign the stored bytes as they are
and with several secrets during a rotation. The tests verify every delivery with the package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from plugins.webhooks.settings import SECRET_PREFIX


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_…`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def new_secret() -> str:
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def rfc3339(timestamp: float) -> str:
    """``2026-11-26T15:22:17.123Z``: RFC 3339 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_body(event_type: str, timestamp: float, channel: str, event_id: str | None, data: Any) -> bytes:
    """The Standard Webhooks body: ``{"type", "timestamp", "channel", "id", "data"}`` as compact
    UTF-8 JSON. ``id`` is relay's event id, the SSE ``id:`` of the same event, so a receiver can
    match a delivery with what browsers saw (``webhook-id`` is per endpoint, not the event's)."""
    body = {"type": event_type, "timestamp": rfc3339(timestamp), "channel": channel, "id": event_id, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def webhook_id(endpoint_id: str, channel: str, event_id: str) -> str:
    """The delivery's ``webhook-id``: derived from (endpoint, channel, event id), so every worker
    that sees the same event computes the same id, and it never changes across retries, resends
    or restarts. Event ids are unique per channel only: without the channel, a publisher on one
    channel could reuse another channel's id and have that event dropped as a duplicate."""
    key = json.dumps([endpoint_id, channel, event_id], ensure_ascii=False)  # unambiguous, whatever the text
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return "msg_" + base64.b32encode(digest[:20]).decode().lower()


def signature(msg_id: str, timestamp: int, body: bytes, secrets: Iterable[str]) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(secret_bytes(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)


def headers(msg_id: str, body: bytes, secrets: Iterable[str], now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, timestamped now."""
    timestamp = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(msg_id, timestamp, body, secrets)}
