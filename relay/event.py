"""The event: what every source produces and every sink receives."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from relay.sse import encode_event, has_forbidden_characters

MAX_NAME_LENGTH = 256  # channel, event name and id: long enough for any real use, short to resume on
MAX_CURSOR_LENGTH = 1024  # a cursor (and so a Last-Event-ID) may name a position per partition
_CONTAINERS = (list, dict, tuple)
MAX_DEPTH = 32  # nesting of arrays and objects in data; deeper is refused on every ingress


class InvalidEvent(ValueError):
    """An event that cannot be relayed; the message says which field was wrong and why."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidJSON(ValueError):
    """Text that is not acceptable JSON. ``reason`` is ``"not_json"`` or ``"too_deep"``."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON: NaN/Infinity refused, nesting bounded by ``max_depth``.

    :raises InvalidJSON: with reason ``not_json`` or ``too_deep`` and a message for humans.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidJSON("too_deep", f"nesting is deeper than {max_depth} levels, the limit") from None
    except ValueError as exc:
        raise InvalidJSON("not_json", f"not valid JSON: {exc}") from None
    depth = json_depth(value, max_depth)
    if depth > max_depth:
        raise InvalidJSON("too_deep", f"nesting is deeper than {max_depth} levels, the limit")
    return value


def json_depth(value: Any, stop_after: int = MAX_DEPTH) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0); stops counting past
    ``stop_after``. Level by level, without recursion, so a hostile value cannot exhaust the
    stack, and with one list comprehension per container (a 64 KB ``[[],[],…]`` takes ~5 ms)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > stop_after:
            return depth
        below: list = []
        for item in level:
            below += [child for child in (item.values() if type(item) is dict else item)
                      if type(child) in _CONTAINERS]
        level = below
    return depth


def check_text(field: str, value: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate such as JSON's ``"\\ud800"``)."""
    if value.isascii():  # a flag of the string: ASCII always encodes, and costs no copy to know
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(field, f"holds {value[exc.start:exc.end]!a} at character {exc.start}, "
                                  "which cannot be encoded as UTF-8 (a lone surrogate)") from None


def check_name(field: str, value: Any, *, required: bool = True, limit: int = MAX_NAME_LENGTH) -> None:
    """Validate a channel, event name or id: a non-empty string, bounded, UTF-8, no CR, LF or NUL."""
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field, "must not be empty")
    if len(value) > limit:
        raise InvalidEvent(field, f"is {len(value)} characters long; the limit is {limit}")
    if has_forbidden_characters(value):
        raise InvalidEvent(field, "must not contain CR, LF or NUL")
    check_text(field, value)


def encode_data(data: Any) -> str:
    """The text sent as SSE ``data``: strings as they are, everything else as compact JSON.

    :raises InvalidEvent: for data that is not JSON, nests deeper than :data:`MAX_DEPTH`, or
        holds text that cannot be encoded as UTF-8 (in a value or a key, at any depth).
    """
    if isinstance(data, str):
        check_text("data", data)
        return data
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        if json_depth(data) > MAX_DEPTH:  # too deep to encode: say so, not what the encoder said
            raise InvalidEvent("data", f"nests deeper than {MAX_DEPTH} levels, the limit") from None
        raise InvalidEvent("data", f"is not JSON-serialisable: {exc}") from None
    if may_nest_deeper(text, MAX_DEPTH) and json_depth(data) > MAX_DEPTH:
        raise InvalidEvent("data", f"nests deeper than {MAX_DEPTH} levels, the limit")
    check_text("data", text)  # a surrogate in any key or value, at any depth
    return text


def may_nest_deeper(text: str, limit: int) -> bool:
    """False when the JSON ``text`` cannot nest deeper than ``limit``: every level opens with a
    ``[`` or ``{``, so fewer of them (counted in C, strings included) bound the depth without
    walking the value. True only means "walk it": most events have a handful."""
    return text.count("[") + text.count("{") > limit


# One encoder for every event: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(slots=True, eq=False)
class Event:
    """One event on its way from a source to the sinks.

    :param channel: where it is published; subscribers choose channels.
    :param event: its name, sent as the SSE ``event`` field (``addEventListener(name, …)``).
    :param data: any JSON value; strings are sent as they are, the rest as compact JSON.
    :param id: set by the publisher, or assigned by the backbone when ``None``.
    :param source: which source brought it (``"http"``, ``"redis"``, …).
    :param timestamp: when relay accepted it (seconds since the epoch).
    :param cursor: the SSE ``id`` to send instead of ``id``, when where a client stands after
        this event says more than which event it is (a Kafka source sends a position per
        partition). ``id`` stays the event's identity (webhooks, dedupe); a client resumes from
        the cursor. ``None``: the SSE ``id`` is ``id``.

    Construction validates every field and raises :class:`InvalidEvent` naming the bad one, so
    an event that exists can always be delivered.
    """

    channel: str
    event: str
    data: Any = None
    id: str | None = None
    source: str = "http"
    timestamp: float = field(default_factory=time.time)
    cursor: str | None = field(default=None, repr=False)
    seq: int = field(default=0, repr=False)  # position given by the backbone; orders replay
    text: str = field(default="", init=False, repr=False)  # ``data`` as sent, encoded once
    _frame: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_name("channel", self.channel)
        check_name("event", self.event)
        check_name("id", self.id, required=False)
        check_name("cursor", self.cursor, required=False, limit=MAX_CURSOR_LENGTH)
        self.text = encode_data(self.data)

    @property
    def frame(self) -> bytes:
        """The SSE block for this event, built once and shared by every client."""
        if self._frame is None:
            self._frame = encode_event(self.text, self.event, self.cursor or self.id)
        return self._frame

    @property
    def sse_id(self) -> str | None:
        """What a client that received this event sends back as ``Last-Event-ID``."""
        return self.cursor or self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "channel": self.channel, "event": self.event, "data": self.data,
                "source": self.source, "timestamp": self.timestamp}
