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

import logging
from typing import TYPE_CHECKING

from relay.event import MAX_DEPTH, Event, InvalidEvent, InvalidJSON, loads_json

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay

ENVELOPE_FIELDS = ("event", "data", "channel", "id")
FORMATS = ("envelope", "raw")
EXCERPT = 200  # characters of a bad message that go into the log

log = logging.getLogger("relay.rejected")


class BadMessage(ValueError):
    """A message that is not an event. ``reason`` is a short label used in counters."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
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
        try:  # the envelope object is one level: its data may nest MAX_DEPTH more, as Event allows
            message = loads_json(text, MAX_DEPTH + 1)
        except InvalidJSON as exc:
            if exc.reason == "too_deep":
                raise BadMessage("too_deep", f"nests deeper than {MAX_DEPTH} levels inside the envelope, "
                                             "the limit") from None
            raise BadMessage(exc.reason, str(exc)) from None
        if not isinstance(message, dict):
            raise BadMessage("wrong_shape", f"expected a JSON object, got {type(message).__name__}")
        unknown = sorted(set(message) - set(ENVELOPE_FIELDS))
        if unknown:
            raise BadMessage("wrong_shape", f"unknown field(s) {', '.join(unknown)}; "
                                            f"allowed: {', '.join(ENVELOPE_FIELDS)}")
        if "event" not in message:
            raise BadMessage("wrong_shape", "no 'event' field")
        return Event(message.get("channel", channel), message["event"], message.get("data"),
                     id=message.get("id"), source=source)
    except InvalidEvent as exc:
        raise BadMessage("invalid_field", str(exc)) from None


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
    """Count and log a message that was skipped. ``where`` says where it came from."""
    relay.stats.incr("rejected", source=source, reason=error.reason)
    log.warning("rejected message from %s %s: %s; payload %s", source, where, error, excerpt(payload))
