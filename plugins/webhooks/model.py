"""The records the sink keeps: endpoints, deliveries and attempts, and what the stores share."""

from __future__ import annotations

import fnmatch
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from plugins.webhooks.settings import redact_url
from plugins.webhooks.signing import rfc3339

# Delivery states. A claimed delivery stays "pending" with its next_attempt_at pushed to the end
# of its lease: if the worker dies mid-attempt, the delivery becomes due again by itself.
PENDING, SUCCEEDED, DEAD, CANCELLED = "pending", "succeeded", "dead", "cancelled"
STATUSES = (PENDING, SUCCEEDED, DEAD, CANCELLED)


@dataclass
class Endpoint:
    id: str
    url: str
    secret: str
    channels: list[str]
    events: list[str] = field(default_factory=list)
    description: str = ""
    previous_secrets: list[list] = field(default_factory=list)  # [[secret, expires_at or None], …]
    max_concurrency: int = 0
    origin: str = "api"  # "config" endpoints are owned by the configuration file
    enabled: bool = True
    disabled_reason: str = ""
    failing_since: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @staticmethod
    def new_id() -> str:
        return "ep_" + secrets.token_hex(8)

    def matches(self, channel: str, event_name: str) -> bool:
        if not any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels):
            return False
        return not self.events or any(fnmatch.fnmatchcase(event_name, pattern) for pattern in self.events)

    @property
    def label(self) -> str:
        """How logs and /healthz name the endpoint: its id and URL origin, never the URL's path or
        query string (which may hold credentials)."""
        return f"{self.id} ({redact_url(self.url)})"

    def signing_secrets(self, now: float | None = None) -> list[str]:
        """The current secret first, then old ones whose rotation grace has not ended."""
        now = time.time() if now is None else now
        return [self.secret] + [s for s, expires in self.previous_secrets if expires is None or expires > now]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """For the admin API: no secrets (they have their own route)."""
        data = self.to_dict()
        del data["secret"], data["previous_secrets"]
        data["rotating"] = len(self.signing_secrets()) > 1
        for key in ("created_at", "updated_at", "failing_since"):
            data[key] = rfc3339(data[key]) if data[key] else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Delivery:
    id: str  # the webhook-id: one per (endpoint, channel, event id), kept across retries and resends
    endpoint_id: str
    event_id: str
    channel: str
    event_type: str
    body: bytes  # exactly the bytes sent on every attempt
    created_at: float
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str = ""
    last_status: int | None = None
    last_error: str = ""
    completed_at: float | None = None

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        data.pop("lease_owner")
        for key in ("created_at", "next_attempt_at", "completed_at"):
            data[key] = rfc3339(data[key]) if data[key] else None
        if self.status != PENDING:
            data["next_attempt_at"] = None
        return data


@dataclass
class Attempt:
    delivery_id: str
    endpoint_id: str
    attempt: int
    started_at: float
    status_code: int | None
    latency_ms: float
    error: str
    response: str  # truncated response body
    outcome: str  # "succeeded", "retry", "dead"

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = rfc3339(self.started_at)
        return data
