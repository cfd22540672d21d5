"""The ``[sources.redis]`` configuration section and its parsed form."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from relay.api import FORMATS, REDIS_URL_SCHEMES, InvalidEvent, Option, Section, check_name

SECTION = "sources.redis"
GLOB_CHARACTERS = "*?["  # an entry of `channels` holding one of these is a PSUBSCRIBE pattern


def _check_url(url: str) -> str | None:
    if url and not url.startswith(REDIS_URL_SCHEMES):
        return f"{url!r} is not a Redis URL; it must start with {', '.join(REDIS_URL_SCHEMES)}"
    return None


def _check_names(what: str):
    def check(names: list[str]) -> str | None:
        for name in names:
            if not name or any(c in name for c in "\r\n\0"):
                return f"{name!r} is not a valid {what} name (empty, or holds CR, LF or NUL)"
        return None
    return check


def _check_event_name(name: str) -> str | None:
    try:
        check_name("event", name)
    except InvalidEvent as exc:
        return str(exc)
    return None


def _check_channel_map(mapping: dict) -> str | None:
    for key, value in mapping.items():
        try:
            check_name("channel", value)
        except InvalidEvent as exc:
            return f"[{key!r}] = {value!r}: {exc}"
    return None


def _check_client_name(name: str) -> str | None:
    if not name or any(c.isspace() for c in name):
        return f"{name!r} must be non-empty without spaces (Redis CLIENT SETNAME rules)"
    return None


SECTION_SCHEMA = Section(SECTION, (
    Option("url", str, "", "Redis URL; the source is off while it is empty", env="RELAY_REDIS_URL",
           check=_check_url),
    Option("channels", list, [], "pub/sub channels to SUBSCRIBE; an entry with *, ? or [ is a pattern",
           env="RELAY_REDIS_CHANNELS", check=_check_names("channel")),
    Option("patterns", list, [], "glob patterns to PSUBSCRIBE", env="RELAY_REDIS_PATTERNS",
           check=_check_names("pattern")),
    Option("streams", list, [], "stream keys to XREAD; entry ids become event ids (resumable)",
           env="RELAY_REDIS_STREAMS", check=_check_names("stream")),
    Option("format", str, "envelope", "message format: a JSON envelope, or the raw payload as data",
           env="RELAY_REDIS_FORMAT", choices=FORMATS),
    Option("event_name", str, "message", "event name given to raw messages", env="RELAY_REDIS_EVENT_NAME",
           check=_check_event_name),
    Option("channel_map", dict, {}, "Redis channel, pattern or stream -> relay channel, when the "
           "message names none", check=_check_channel_map),
    Option("stream_field", str, "payload", "the stream entry field that holds the message"),
    Option("max_size", int, 65536, "largest message accepted, in bytes", env="RELAY_REDIS_MAX_SIZE", min=1),
    Option("client_name", str, "relay", "prefix of the connection names shown by CLIENT LIST",
           check=_check_client_name),
    Option("connect_timeout", float, 5.0, "seconds to open a connection and say hello", min=0.1),
    Option("health_interval", float, 5.0, "seconds of silence before a PING; an unanswered PING after as "
           "long marks the connection dead", min=0.1),
    Option("reconnect_min", float, 0.5, "first delay before reconnecting, in seconds", min=0.01),
    Option("reconnect_max", float, 10.0, "cap of the exponential reconnect delay, in seconds", min=0.01),
    Option("stream_block", float, 0.5, "longest XREAD BLOCK, in seconds; resumes wait at most this long "
           "for the Streams connection", min=0.01),
    Option("stream_batch", int, 100, "entries read per XREAD (COUNT)", min=1),
    Option("replay_scan", int, 10000, "most entries read per stream to answer one resume", min=1),
    Option("group", str, "", "consumer group that hands stream entries to durable sinks (webhooks) at least "
           "once, acknowledged only once they took them; empty: off", env="RELAY_REDIS_GROUP"),
    Option("claim_idle", float, 30.0, "seconds an entry may stay unacknowledged by a vanished worker before "
           "another worker of the group claims it", min=0.1),
), "The Redis source: pub/sub channels, patterns and Streams.")


@dataclass(frozen=True)
class RedisSettings:
    """The section, validated and split: glob entries of ``channels`` moved to ``patterns``."""

    url: str
    channels: tuple[str, ...]
    patterns: tuple[str, ...]
    streams: tuple[str, ...]
    format: str
    event_name: str
    channel_map: dict[str, str]
    stream_field: str
    max_size: int
    client_name: str
    connect_timeout: float
    health_interval: float
    reconnect_min: float
    reconnect_max: float
    stream_block: float
    stream_batch: int
    replay_scan: int
    group: str
    claim_idle: float

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> RedisSettings:
        values = dict(section)
        channels = [c for c in values["channels"] if not is_pattern(c)]
        patterns = [c for c in values["channels"] if is_pattern(c)] + list(values["patterns"])
        values.update(channels=_unique(channels), patterns=_unique(patterns), streams=_unique(values["streams"]),
                      channel_map=dict(values["channel_map"]))
        return cls(**values)

    @property
    def has_pubsub(self) -> bool:
        return bool(self.channels or self.patterns)

    def connection_name(self, link: str) -> str:
        """What ``CLIENT LIST`` shows for one of this worker's connections."""
        return f"{self.client_name}:{os.getpid()}:{link}"


def is_pattern(name: str) -> bool:
    return any(c in name for c in GLOB_CHARACTERS)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
