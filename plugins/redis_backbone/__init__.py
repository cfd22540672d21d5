"""The Redis backbone: ``backbone = "redis://…"`` (one Redis) or
``backbone = "redis+cluster://host:port[,host:port…]"`` (a Redis Cluster, any seed nodes).

One code path for both: one Redis is a cluster whose one node serves every slot. Channels are
grouped into ``partitions`` whose keys carry one hash tag each, so every publish is one script
in one slot (:mod:`.keys`, :mod:`.scripts`); announcements go over sharded pub/sub, and a
worker subscribes only to the channels its clients (or sinks, through ``relay.bus.want``)
want, one connection per shard (:mod:`.readers`); ids are ordered per partition and a stream
resumes from one cursor naming a position per partition (:mod:`.cursor`, :mod:`.backbone`).
On one Redis there is one partition by default: one counter orders every event, and the id
is the plain stream id ``<ms>-<seq>``. Durable sinks (webhooks) get every event from
per-partition logs read through one consumer group (:mod:`.durable_log`).
docs/design-redis-cluster.md describes what is built and what is not.
"""

from __future__ import annotations

from plugins.redis_backbone.backbone import RedisBackbone
from plugins.redis_backbone.topology import SCHEME
from relay.api import REDIS_URL_SCHEMES, Option, Section, hookimpl

SECTION = "backbones.redis"
MAX_PARTITIONS = 40  # a cursor naming each stays under relay's 1024-character id limit


def _check_partitions(n: int) -> str | None:
    return None if n <= MAX_PARTITIONS else f"at most {MAX_PARTITIONS}"


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("partitions", int, 0, "partitions channels are grouped into, each ordered by its own counter (part "
                                     "of the data layout: changing it moves channels); 0: 1 on one Redis "
                                     "(redis://: one order for every event, ids '<ms>-<seq>'), 32 on a cluster; "
                                     f"at most {MAX_PARTITIONS}, so a cursor stays under 1024 characters",
               min=0, check=_check_partitions),
        Option("maxlen", int, 10000, "entries kept per channel stream (approximate trim)",
               env="RELAY_BACKBONE_MAXLEN", min=1),
        Option("max_age", float, 0.0, "seconds after which entries are trimmed (approximately); 0: by maxlen only",
               env="RELAY_BACKBONE_MAX_AGE", min=0),
        Option("prefix", str, "relay:", "prefix of every Redis key relay uses"),
        Option("health_interval", float, 5.0, "seconds of silence before a shard subscription is checked with PING",
               min=0.1),
        Option("connect_timeout", float, 2.0, "seconds to wait for a connection", min=0.05),
        Option("command_timeout", float, 1.0, "seconds a publish or a resume waits for a node's answer "
                                              "before answering 503", min=0.05),
        Option("unsubscribe_delay", float, 5.0, "seconds a channel stays subscribed after its last client left",
               min=0),
        Option("catch_up_margin", float, 2.0, "seconds of host clock difference allowed for: how far before a "
                                              "cursor's event a resume reads the partitions the cursor does not name, "
                                              "and before this worker's clock a newly wanted channel's stream is read "
                                              "when its master cannot tell its time", min=0),
        Option("ack_replicas", int, 0, "replicas that must have an event before the publish is acknowledged "
                                       "(WAIT); fewer: 503, the event is stored but may be lost by a failover",
               min=0),
        Option("ack_timeout", float, 0.1, "seconds WAIT waits for ack_replicas", min=0.001),
        Option("durable_log", str, "auto", "append every event to its partition's durable log, read by the durable "
                                           "sinks (webhooks) through a consumer group; auto: once a durable sink of "
                                           "any instance created the log (and always where one is set up); "
                                           "true: always; false: never (sinks then see the channels their worker "
                                           "hears only)",
               choices=("auto", "true", "false")),
        Option("durable_group", str, "relay-sinks", "consumer group through which the durable sinks read the logs"),
        Option("log_maxlen", int, 100000, "entries kept per partition's durable log (approximate trim): how far "
                                          "the durable sinks may lag", min=1),
        Option("log_batch", int, 100, "entries read at once from one partition's durable log", min=1),
        Option("log_wait", float, 0.2, "seconds a durable log reader waits (BLOCK) when its partitions are "
                                       "empty: the longest delay before a sink sees a new event", min=0.01),
        Option("claim_idle", float, 30.0, "seconds an entry read but not acknowledged stays with its reader "
                                          "before another worker claims it (a worker that died)", min=0.1),
    ), "The Redis backbone (used when backbone = 'redis://…', 'rediss://…', 'unix://…' or "
       "'redis+cluster://host:port,…').")]


@hookimpl
def relay_backbone(relay, url):
    if not url.startswith((*REDIS_URL_SCHEMES, SCHEME)):
        return None
    return RedisBackbone(relay, url, relay.config.section(SECTION))
