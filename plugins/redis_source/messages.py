"""From what Redis delivers (pub/sub messages, stream entries) to relay events.

Both go through :func:`relay.envelope.decode`, so formats and size limits are the same for every
source. The relay channel is the envelope's ``channel``, else ``channel_map`` of the Redis channel
(then of the pattern that matched, for PSUBSCRIBE), else the Redis channel or stream name itself.
"""

from __future__ import annotations

from relay.api import BadMessage, Event, InvalidEvent, check_chosen_id, decode

from .settings import RedisSettings

SOURCE = "redis"
STREAM_SOURCE = "redis-streams"  # the source of stream events: durable sinks take them from the group


def _name(raw: bytes | str, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("not_utf8", f"the Redis {what} name {raw!r} is not UTF-8") from None


def from_pubsub(settings: RedisSettings, channel: bytes | str, pattern: bytes | str | None,
                payload: bytes) -> Event:
    """The event for one pub/sub message. :raises BadMessage: when it is not one."""
    channel_name = _name(channel, "channel")
    default = settings.channel_map.get(channel_name)
    if default is None and pattern is not None:
        default = settings.channel_map.get(_name(pattern, "pattern"))
    event = decode(payload, channel=default or channel_name, source=SOURCE, format=settings.format,
                   event_name=settings.event_name, max_size=settings.max_size)
    if event.id is not None:  # publisher-chosen: never in the form of a position in a log
        try:
            check_chosen_id(event.id)
        except InvalidEvent as exc:
            raise BadMessage("invalid_field", str(exc)) from None
    return event


def from_stream(settings: RedisSettings, stream: str, entry_id: bytes | str, fields: dict) -> Event:
    """The event for one stream entry; its id is the entry id. :raises BadMessage: when it is not one."""
    entry_id = _name(entry_id, "entry id")
    payload = fields.get(settings.stream_field.encode("utf-8"), fields.get(settings.stream_field))
    if payload is None:
        names = ", ".join(repr(_printable(k)) for k in list(fields)[:10])
        raise BadMessage("wrong_shape", f"the entry has no {settings.stream_field!r} field (it has {names or 'none'})")
    event = decode(payload, channel=settings.channel_map.get(stream, stream), source=STREAM_SOURCE,
                   format=settings.format, event_name=settings.event_name, max_size=settings.max_size)
    # The entry id wins over an envelope's own id: it is what a client resumes from. It is a stream
    # entry id (digits and one dash, see relay.api.parse_stream_id), so it needs none of Event's checks.
    event.id = entry_id
    return event


def _printable(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
