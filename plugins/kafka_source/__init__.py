"""Kafka source: ``[sources.kafka]``, on kafka-python, inside gevent workers.

* Live delivery (:mod:`.broadcast`): every worker reads every partition, without a group, and
  publishes each record; ids are broker positions, the same on every worker.
* Durable delivery (:mod:`.group`): with ``group_id`` set and a sink implementing
  ``relay_deliver_durable`` loaded, a consumer group hands each record to those sinks and
  commits only what they all took: at-least-once.
* Resume (:mod:`.replay`): ``Last-Event-ID`` values this source issued are resumed from the log.

See docs/kafka.md.
"""

from __future__ import annotations

import logging

from relay.api import hookimpl

from .broadcast import BroadcastSource
from .group import GroupSource
from .replay import Replayer
from .settings import SECTION, SECTION_SCHEMA, native_crc32c

log = logging.getLogger("relay.source.kafka")


def _settings(relay) -> dict | None:
    settings = relay.config.section(SECTION)
    if settings["bootstrap_servers"] and settings["topics"]:
        return settings
    return None


@hookimpl
def relay_config_sections():
    return [SECTION_SCHEMA]


@hookimpl
def relay_sources(relay):
    settings = relay.config.section(SECTION)
    if not settings["bootstrap_servers"] and not settings["topics"]:
        return []
    if _settings(relay) is None:
        log.error("[sources.kafka] needs both bootstrap_servers (RELAY_KAFKA_BOOTSTRAP_SERVERS) and topics "
                  "(RELAY_KAFKA_TOPICS); the Kafka source is off")
        return []
    durable = relay.durable_sinks()
    group = bool(settings["group_id"] and durable)
    if settings["group_id"] and not durable:
        log.warning("[sources.kafka] group_id is set, but no loaded plugin implements relay_deliver_durable: "
                    "no group consumer runs")
    elif durable and not settings["group_id"]:
        log.info("durable sink(s) %s loaded but [sources.kafka] has no group_id: they get Kafka events "
                    "through relay_deliver, on every worker, without at-least-once", ", ".join(durable))
    if not native_crc32c() and "check_crcs" not in settings["consumer"]:
        log.warning("the crc32c package is not installed: Kafka record CRCs are not checked (kafka-python's "
                    "pure-Python check blocks the gevent hub); pip install crc32c to check them")
    sources = [BroadcastSource(settings, dead_letters=not group)]
    if group:
        relay.durable_sources.add("kafka")
        sources.append(GroupSource(settings))
    return sources


@hookimpl
def relay_replay(relay, channels, last_event_id, limit):
    settings = _settings(relay)
    if settings is None:
        return None
    replayer = relay.extensions.get("kafka")
    if replayer is None:
        replayer = relay.extensions["kafka"] = Replayer(settings)
    return replayer.replay(relay, channels, last_event_id, limit)
