"""Turning broker messages into events: the formats every source shares.

``format = "envelope"`` (the default) reads a JSON object
``{"event": "<name>", "data": <any>, "channel": "<optional>", "id": "<optional>"}``;
``format = "raw"`` takes the whole payload as ``data`` under a configured event name.

A message that cannot become an event raises :class:`BadMessage`; sources pass it to
:func:`reject`, which counts it, logs where it came from with a bounded excerpt, and lets the
source go on with the next message. Text is checked here, where it comes in: bytes that are not
UTF-8 (including UTF-8-looking encodings of lone surrogates), JSON escapes of lone surrogates
(``"\\ud800"``) and nesting deeper than :data:`relay.event.MAX_DEPTH` are rejected messages, never
errors of the source.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from relay import signals
from relay.event import (MAX_DEPTH, Event, InvalidEvent, InvalidJSON, _reject_constant, json_depth, loads_json,
                         may_nest_deeper)

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay

ENVELOPE_FIELDS = ("event", "data", "channel", "id")
FORMATS = ("envelope", "raw")
EXCERPT = 200  # characters of a bad message that go into the log



class BadMessage(ValueError):
    """A message that is not an event. ``reason`` is a short label used in counters."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def decode(payload: bytes | str, *, channel: str, source: str, format: str = "envelope",
           event_name: str = "message", max_size: int = 65536) -> Event:
    """Build an event from one broker message.

    :param payload: the message as received.
    :param channel: the relay channel when the envelope names none (or for raw messages).
    :param source: recorded on the event (``"redis"``, ``"kafka"``, …).
    :param format: ``"envelope"`` or ``"raw"``.
    :param event_name: the event name given to raw messages.
    :param max_size: larger payloads are rejected as ``too_large``.
    :raises BadMessage: with reason ``too_large``, ``not_utf8``, ``not_json``, ``too_deep``,
        ``wrong_shape`` or ``invalid_field``.
    """
    text = _text(payload, max_size)
    try:
        if format == "raw":
            return Event(channel, event_name, text, source=source)
        message = parse_object(text, ENVELOPE_FIELDS, "the message")
        return Event(message.get("channel", channel), message["event"], message.get("data"),
                     id=message.get("id"), source=source)
    except InvalidEvent as exc:
        raise BadMessage("invalid_field", str(exc)) from None


def parse_object(text: str, fields: tuple[str, ...], what: str) -> dict:
    """The JSON object of a broker envelope or an HTTP publish body, checked: JSON, nesting, an
    object, only ``fields``, an ``event``. The one parser for both (HTTP has no ``channel``).

    :param what: names the text in messages (``"the message"``, ``"the body"``).
    :raises BadMessage: ``not_json``, ``too_deep`` or ``wrong_shape``.
    """
    try:  # the object is one level: its data may nest MAX_DEPTH more, as Event allows
        message = _loads_envelope(text)
    except InvalidJSON as exc:
        if exc.reason == "too_deep":
            raise BadMessage("too_deep", f"{what}: nesting is deeper than {MAX_DEPTH} levels "
                                         "(the limit for data)") from None
        raise BadMessage(exc.reason, f"{what}: {exc}") from None
    if not isinstance(message, dict):
        raise BadMessage("wrong_shape", f"{what} must be a JSON object, got {type(message).__name__}")
    unknown = message.keys() - set(fields)
    if unknown:
        raise BadMessage("wrong_shape", f"unknown field(s) {', '.join(sorted(unknown))}; "
                                        f"allowed: {', '.join(fields)}")
    if "event" not in message:
        raise BadMessage("wrong_shape", "event: is required (the SSE event name)")
    return message


# One decoder for every message: ``json.loads`` given a keyword (``parse_constant``) builds a new
# JSONDecoder and scanner per call, which took 4 of the 9 µs of parsing a 120-byte envelope.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads_envelope(text: str) -> object:
    """:func:`relay.event.loads_json` with ``MAX_DEPTH + 1``, on the shared decoder.

    Text that is not JSON, nests too deeply or starts with a byte-order mark (``json.loads``
    words that one itself) goes to ``loads_json``, which raises with the usual message."""
    try:
        if not text.startswith("\ufeff"):
            value = _DECODER.decode(text)
            if not may_nest_deeper(text, MAX_DEPTH + 1) or json_depth(value, MAX_DEPTH + 1) <= MAX_DEPTH + 1:
                return value
    except (RecursionError, ValueError):
        pass
    return loads_json(text, MAX_DEPTH + 1)


def _text(payload: bytes | str, max_size: int) -> str:
    """The payload as text, its size checked in bytes.

    Strict UTF-8 both ways: the codec refuses surrogates encoded as bytes (``ED A0 80``), and a
    ``str`` payload (from a client library that decoded with ``surrogateescape``) must encode.
    """
    if len(payload) > max_size:  # a str's UTF-8 size is at least its length: no need to encode it
        unit = "bytes" if isinstance(payload, bytes) else "characters"
        raise BadMessage("too_large", f"{len(payload)} {unit}; the limit is {max_size} bytes")
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage("not_utf8", str(exc)) from None
    try:
        size = len(payload.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadMessage("not_utf8", f"holds {payload[exc.start:exc.end]!a} at character {exc.start}, "
                                     "which cannot be encoded as UTF-8") from None
    if size > max_size:
        raise BadMessage("too_large", f"{size} bytes; the limit is {max_size}")
    return payload


def excerpt(payload: bytes | str) -> str:
    """A bounded, printable excerpt of a payload for logs."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    short = text[:EXCERPT]
    return repr(short) + (f"… ({len(text)} characters)" if len(text) > EXCERPT else "")


def reject(relay: Relay, source: str, where: str, payload: bytes | str, error: BadMessage) -> None:
    """Report a message that was skipped (``event-rejected``: counted and logged). ``where`` says
    where it came from."""
    signals.event_rejected.send(relay, source=source, reason=error.reason, where=where, error=str(error),
                                payload=excerpt(payload))
