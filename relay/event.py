"""The event: what every source produces and every sink receives."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from relay.sse import encode_event, has_forbidden_characters

MAX_NAME_LENGTH = 256  # channel, event name and id: long enough for any real use, short to resume on


class InvalidEvent(ValueError):
    """An event that cannot be relayed; the message says which field was wrong and why."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def check_name(field: str, value: Any, *, required: bool = True) -> None:
    """Validate a channel, event name or id: a non-empty string, bounded, no CR, LF or NUL."""
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidEvent(field, f"is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if has_forbidden_characters(value):
        raise InvalidEvent(field, "must not contain CR, LF or NUL")


def encode_data(data: Any) -> str:
    """The text sent as SSE ``data``: strings as they are, everything else as compact JSON."""
    if isinstance(data, str):
        return data
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent("data", f"is not JSON-serialisable: {exc}") from None


@dataclass(slots=True, eq=False)
class Event:
    """One event on its way from a source to the sinks.

    :param channel: where it is published; subscribers choose channels.
    :param event: its name, sent as the SSE ``event`` field (``addEventListener(name, …)``).
    :param data: any JSON value; strings are sent as they are, the rest as compact JSON.
    :param id: set by the publisher, or assigned by the backbone when ``None``.
    :param source: which source brought it (``"http"``, ``"redis"``, …).
    :param timestamp: when relay accepted it (seconds since the epoch).

    Construction validates every field and raises :class:`InvalidEvent` naming the bad one, so
    an event that exists can always be delivered.
    """

    channel: str
    event: str
    data: Any = None
    id: str | None = None
    source: str = "http"
    timestamp: float = field(default_factory=time.time)
    seq: int = field(default=0, repr=False)  # position given by the backbone; orders replay
    text: str = field(default="", init=False, repr=False)  # ``data`` as sent, encoded once
    _frame: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_name("channel", self.channel)
        check_name("event", self.event)
        check_name("id", self.id, required=False)
        self.text = encode_data(self.data)

    @property
    def frame(self) -> bytes:
        """The SSE block for this event, built once and shared by every client."""
        if self._frame is None:
            self._frame = encode_event(self.text, self.event, self.id)
        return self._frame

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "channel": self.channel, "event": self.event, "data": self.data,
                "source": self.source, "timestamp": self.timestamp}
