"""The Redis source plugin: pub/sub channels, PSUBSCRIBE patterns and Streams (see docs/redis.md).

Modules, one job each: :mod:`.settings` (the ``[sources.redis]`` section), :mod:`.messages`
(Redis messages to events), :mod:`.link` (one connection kept alive, with capped backoff),
:mod:`.pubsub` and :mod:`.streams` (the two links), :mod:`.group` (the consumer group that
hands stream entries to durable sinks), :mod:`.replay` (resume from Streams) and :mod:`.source`
(the links as one source with one health status).

Each worker holds one pub/sub connection and, when streams are configured, one Streams
connection, whatever the number of browsers.
"""

from __future__ import annotations

import logging

from relay.api import hookimpl, parse_stream_id

from .messages import STREAM_SOURCE
from .settings import SECTION, SECTION_SCHEMA, RedisSettings
from .source import RedisSource

log = logging.getLogger("relay.source.redis")
EXTENSION = "redis"  # key of the running source in relay.extensions


@hookimpl
def relay_config_sections():
    return [SECTION_SCHEMA]


@hookimpl
def relay_sources(relay):
    settings = RedisSettings.from_section(relay.config.section(SECTION))
    if not settings.url:
        if settings.has_pubsub or settings.streams:
            log.warning("[sources.redis] names channels or streams but no url (RELAY_REDIS_URL): "
                        "the Redis source is off")
        return []
    if not (settings.has_pubsub or settings.streams):
        log.warning("[sources.redis] has a url but no channels, patterns or streams "
                    "(RELAY_REDIS_CHANNELS): the Redis source is off")
        return []
    source = relay.extensions[EXTENSION] = RedisSource(relay, settings)
    if source.group is not None:  # durable sinks take stream events from the group, once
        relay.durable_sources.add(STREAM_SOURCE)
    elif settings.group:
        log.warning("[sources.redis] group is set but %s: the group is not used",
                    "no stream is configured" if not settings.streams
                    else "no loaded plugin implements relay_deliver_durable")
    return [source]


@hookimpl
def relay_replay(relay, channels, last_event_id, limit):
    source = relay.extensions.get(EXTENSION)
    if source is None or source.streams is None or parse_stream_id(last_event_id) is None:
        return None  # not an id this source gave
    return source.replay(channels, last_event_id, limit)
