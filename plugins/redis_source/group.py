"""Durable delivery from Redis Streams: a consumer group hands each entry to the durable sinks.

With ``group`` set and a durable sink loaded (a plugin implementing ``relay_deliver_durable``,
such as webhooks), every worker joins the consumer group on every configured stream. Redis gives
each entry to one member; the member offers it to every durable sink and acknowledges it (XACK)
only once all of them took it. An entry a sink refused stays pending and is offered again after a
backoff (that stream waits; the others go on). Entries left pending by a worker that died are
claimed (XAUTOCLAIM) by another member once they have been idle for ``claim_idle`` seconds. The
group's position lives in Redis, so entries added while every relay was down are delivered when
one comes back. At-least-once: after a crash an entry may be offered again; sinks deduplicate by
the event id (the entry id).

Browsers are unaffected: the Streams link still reads every entry in every worker for them.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import gevent
import redis

from relay.api import BadMessage, DurableOffers, reject

from .link import Link, make_pool
from .messages import SOURCE, from_stream

log = logging.getLogger("relay.source.redis")



class StreamGroupLink(Link):
    name = "group"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.client: redis.Redis | None = None
        self.consumer = ""
        self.waiting: dict[str, float] = {}  # stream -> when to offer its refused entry again
        self.offers = DurableOffers(self.relay)  # the offer-until-taken policy, with its backoff
        self.next_claim = 0.0

    def connect(self) -> None:
        settings = self.settings
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"  # after fork: one member per worker
        self.client = redis.Redis(connection_pool=make_pool(settings, self.name))
        for stream in settings.streams:
            try:  # a new group starts after the newest entry, like the Streams link
                self.client.xgroup_create(stream, settings.group, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.set_state("up", f"group {settings.group!r} on {len(settings.streams)} stream(s)")

    def close(self) -> None:
        if self.client is not None:
            self.client.connection_pool.disconnect()
            self.client = None

    def serve(self) -> None:
        settings, client = self.settings, self.client
        block_ms = max(1, int(settings.stream_block * 1000))
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= self.next_claim:
                self.next_claim = now + settings.claim_idle / 2
                self._claim_abandoned()
            due = {s: "0" for s, at in self.waiting.items() if now >= at}  # our own pending entries
            if due:
                self._handle(client.xreadgroup(settings.group, self.consumer, due, count=settings.stream_batch))
            fresh = {s: ">" for s in settings.streams if s not in self.waiting}
            if fresh:
                self._handle(client.xreadgroup(settings.group, self.consumer, fresh, count=settings.stream_batch,
                                               block=block_ms))
            else:  # every stream waits for a sink: sleep until the first is due
                self.stopping.wait(max(0.01, min(self.waiting.values()) - time.monotonic()))

    def _claim_abandoned(self) -> None:
        """Take over entries a vanished member read but never acknowledged."""
        idle_ms = int(self.settings.claim_idle * 1000)
        for stream in self.settings.streams:
            _, entries, *_ = self.client.xautoclaim(stream, self.settings.group, self.consumer, idle_ms,
                                                     count=self.settings.stream_batch)
            if entries:
                log.info("redis group %s: claimed %d entries of %s left by another worker",
                         self.settings.group, len(entries), stream)
                self._handle([(stream.encode(), entries)])

    def _handle(self, reply) -> None:
        for name, entries in reply or ():
            stream = name.decode("utf-8") if isinstance(name, bytes) else name
            for entry_id, fields in entries:
                if fields is None:  # deleted from the stream while pending: nothing to deliver
                    self.client.xack(stream, self.settings.group, entry_id)
                    continue
                if not self._offer(stream, entry_id.decode(), fields):
                    break  # this stream waits for the refusing sink; its later entries stay pending
            else:
                self.waiting.pop(stream, None)
            gevent.sleep(0)  # a long batch must not keep SSE writers from running

    def _offer(self, stream: str, entry_id: str, fields: dict) -> bool:
        """Offer one entry to the durable sinks; acknowledge it once all took it."""
        relay, settings = self.relay, self.settings
        try:
            event = relay.transform(from_stream(settings, stream, entry_id, fields))
        except BadMessage as exc:  # counted and logged by the Streams link too; never stalls the group
            reject(relay, SOURCE, f"stream {stream!r} entry {entry_id} (group {settings.group})",
                   repr(fields)[:200], exc)
            event = None
        if event is not None:
            delay = self.offers.offer(event, key=entry_id, lane=stream)
            if delay is not None:
                self.waiting[stream] = time.monotonic() + delay
                relay.stats.incr("redis_group_redeliveries")
                log.warning("durable sink(s) %s refused %s entry %s; offering it again in %.1fs",
                            ", ".join(self.offers.refused), stream, entry_id, delay)
                return False
        self.client.xack(stream, settings.group, entry_id)
        return True
