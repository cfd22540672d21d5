"""Turning broker messages into events: the formats every source shares.

``format = "envelope"`` (the default) reads a JSON object
``{"event": "<name>", "data": <any>, "channel": "<optional>", "id": "<optional>"}``;
``format = "raw"`` takes the whole payload as ``data`` under a configured event name.

A message that cannot become an event raises :class:`BadMessage`; sources pass it to
:func:`reject`, which counts it, logs where it came from with a bounded excerpt, and lets the
source go on with the next message.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from relay.event import Event, InvalidEvent

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(payload: bytes | str, *, channel: str, source: str, format: str = "envelope",
           event_name: str = "message", max_size: int = 65536) -> Event:
    """Build an event from one broker message.

    :param payload: the message as received.
    :param channel: the relay channel when the envelope names none (or for raw messages).
    :param source: recorded on the event (``"redis"``, ``"kafka"``, …).
    :param format: ``"envelope"`` or ``"raw"``.
    :param event_name: the event name given to raw messages.
    :param max_size: larger payloads are rejected as ``too_large``.
    :raises BadMessage: with reason ``too_large``, ``not_utf8``, ``not_json``, ``wrong_shape`` or
        ``invalid_field``.
    """
    size = len(payload)
    if size > max_size:
        raise BadMessage("too_large", f"{size} bytes; the limit is {max_size}")
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage("not_utf8", str(exc)) from None
    try:
        if format == "raw":
            return Event(channel, event_name, payload, source=source)
        try:
            message = json.loads(payload, parse_constant=_reject_constant)
        except ValueError as exc:
            raise BadMessage("not_json", str(exc)) from None
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


def excerpt(payload: bytes | str) -> str:
    """A bounded, printable excerpt of a payload for logs."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    short = text[:EXCERPT]
    return repr(short) + (f"… ({len(text)} characters)" if len(text) > EXCERPT else "")


def reject(relay: Relay, source: str, where: str, payload: bytes | str, error: BadMessage) -> None:
    """Count and log a message that was skipped. ``where`` says where it came from."""
    relay.stats.incr("rejected", source=source, reason=error.reason)
    log.warning("rejected message from %s %s: %s; payload %s", source, where, error, excerpt(payload))
