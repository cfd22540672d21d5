"""Resuming from Redis itself: the entries after a client's ``Last-Event-ID``, read back from Streams.

relay asks for this only when its in-memory history does not know the id (after a restart, or
once the id has left the history). Every configured stream is read backwards from its newest
entry down to the id (XREVRANGE), keeping the newest ``limit`` events of the client's channels:
work is bounded by ``replay_scan`` entries per stream, whatever id a client sends.

The answer is incomplete (``reason = "evicted"``) when more than ``limit`` events match, when
``replay_scan`` entries were read without reaching the id, or when entries after the id may have
been trimmed or deleted (see :func:`_trimmed_after`).
"""

from __future__ import annotations

import logging

import redis

from relay.api import BadMessage, Event, Replay, parse_stream_id

from .messages import from_stream
from .settings import RedisSettings

log = logging.getLogger("relay.source.redis")

BATCH = 500  # entries per XREVRANGE


def replay(client: redis.Redis, settings: RedisSettings, channels: list[str], last_id: str,
           limit: int) -> Replay:
    """The events after ``last_id`` on ``channels``, oldest first, from every configured stream."""
    after = parse_stream_id(last_id)
    if after is None:
        raise ValueError(f"{last_id!r} is not a stream entry id")
    wanted = set(channels)
    found: list[Event] = []
    complete = True
    for stream in settings.streams:
        if settings.format == "raw" and settings.channel_map.get(stream, stream) not in wanted:
            continue  # raw entries all go to one channel, and not one of the client's
        events, reached = _newest_after(client, settings, stream, last_id, wanted, limit + 1)
        found.extend(events)
        complete = complete and reached and not _trimmed_after(client, stream, after)
    found.sort(key=lambda event: parse_stream_id(event.id))
    if len(found) > limit:
        found, complete = found[len(found) - limit:], False
    return Replay(found, complete, "" if complete else "evicted")


def _newest_after(client: redis.Redis, settings: RedisSettings, stream: str, last_id: str,
                  wanted: set[str], want: int) -> tuple[list[Event], bool]:
    """Up to ``want`` newest events of ``wanted`` channels after ``last_id`` in one stream.

    Returns them oldest first, and whether the scan reached ``last_id`` (saw everything after it).
    """
    events: list[Event] = []
    newest, scanned = "+", 0
    while scanned < settings.replay_scan:
        count = min(BATCH, settings.replay_scan - scanned)
        batch = client.xrevrange(stream, newest, f"({last_id}", count=count)
        for entry_id, fields in batch:
            try:
                event = from_stream(settings, stream, entry_id, fields)
            except BadMessage as exc:  # counted when it was first read live; skip it again
                log.debug("resume: skipped entry %s of %r: %s", entry_id, stream, exc)
                continue
            if event.channel in wanted:
                events.append(event)
                if len(events) >= want:
                    return events[::-1], False
        scanned += len(batch)
        if len(batch) < count:
            return events[::-1], True
        newest = f"({batch[-1][0].decode()}"
    return events[::-1], False


def _trimmed_after(client: redis.Redis, stream: str, after: tuple[int, int]) -> bool:
    """True when entries newer than ``after`` may have been trimmed or deleted from ``stream``.

    XDEL records the newest id it deleted (``max-deleted-entry-id``, Redis 7). Trimming removes
    the oldest entries, so it may have cost the client something only when the stream now begins
    after the client's id and lost entries at some point (``entries-added`` > ``length``). Without
    those fields (Redis before 7) a stream that begins after the id counts as trimmed.
    """
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such key: nothing was ever there, nothing lost
        return False
    deleted = _id(info.get("max-deleted-entry-id"))
    if deleted is not None and deleted > after:
        return True
    first = info.get("first-entry")
    if not first or _id(first[0]) <= after:
        return False  # the stream still reaches back to the client's id
    added = info.get("entries-added")
    return added is None or added > info.get("length", 0)


def _id(value) -> tuple[int, int] | None:
    if value is None:
        return None
    return parse_stream_id(value.decode() if isinstance(value, bytes) else str(value))
