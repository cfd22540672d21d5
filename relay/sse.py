"""The ``text/event-stream`` wire format (WHATWG HTML, "Server-sent events").

Pure functions from values to bytes, so the framing rules live in one place and are tested on
their own: data is split on CR LF, CR and LF only (never on other Unicode line breaks), each
piece gets its own ``data: `` line, and ``id``/``event`` may never carry CR, LF or NUL, which
would let a value inject fields of its own.
"""

from __future__ import annotations

import re

MISSED_EVENT = "relay-missed"  # sent first when a resume cannot replay everything: refetch your state

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One event block. ``data`` may span lines; an empty string still dispatches an event."""
    parts = []
    if id is not None:
        _check_field("id", id)
        parts.append(f"id: {id}\n")
    if event:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if "\n" in data or "\r" in data:
        parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:  # one line, as JSON data always is: no split
        parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment block: ignored by clients, keeps proxies from closing an idle stream."""
    return "".join(f":{' ' if line else ''}{line}\n" for line in _LINE_BREAK.split(text)).encode("utf-8") + b"\n"


def encode_retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    if not isinstance(milliseconds, int) or isinstance(milliseconds, bool) or milliseconds < 0:
        raise ValueError(f"retry must be a non-negative integer of milliseconds, got {milliseconds!r}")
    return f"retry: {milliseconds}\n\n".encode("ascii")


def has_forbidden_characters(value: str) -> bool:
    """True when ``value`` holds CR, LF or NUL and so cannot be an ``id``, ``event`` or channel."""
    return "\n" in value or "\r" in value or "\x00" in value  # three scans in C beat one regex search


def _check_field(name: str, value: str) -> None:
    if has_forbidden_characters(value):
        raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
