"""Restarts under a steady stream lose nothing; metrics add up across workers."""

import re
import signal
import threading
import time

from relay.testing import follow, http_request, wait_until


def config(redis_server):
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": "restart:", "health_interval": 0.5}},
            "sinks": {"sse": {"retry": 200}}}


def sse_clients(server) -> float:
    """Streams subscribed on all of ``server``'s workers (the ``relay_sse_clients`` gauge, summed)."""
    try:
        text = http_request(f"{server.url}/metrics", timeout=2)[2].decode()
    except OSError:
        return 0
    found = re.search(r"^relay_sse_clients (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0


class SteadyPublisher(threading.Thread):
    """Publishes one event every ``interval`` through ``server`` until ``count`` are accepted."""

    def __init__(self, server, channel, count, interval=0.02):
        super().__init__(daemon=True)
        self.server, self.channel, self.count, self.interval = server, channel, count, interval
        self.ids: list[str] = []

    def run(self):
        deadline = time.monotonic() + 60
        while len(self.ids) < self.count and time.monotonic() < deadline:
            status, _, body = http_request(f"{self.server.url}/events/{self.channel}", "POST",
                                           f'{{"event":"n","data":{len(self.ids)}}}'.encode(),
                                           {"Content-Type": "application/json"}, timeout=5)
            if status == 202:
                self.ids.append(re.search(r'"id":"([^"]+)"', body.decode()).group(1))
            time.sleep(self.interval)


def test_reload_and_restart_during_a_steady_stream_lose_nothing(relay_server_factory, redis_server):
    reader = relay_server_factory(config(redis_server), workers=2)
    writer = relay_server_factory(config(redis_server))
    publisher = SteadyPublisher(writer, "steady", 150)
    restarts = []

    def restart_reader():
        # Restart points are counted in published events, not seconds: mid-stream on any machine.
        wait_until(lambda: len(publisher.ids) >= 30, 30, message="30 events before the reload")
        reader.process.send_signal(signal.SIGHUP)  # gunicorn reload: new workers, old ones drain
        restarts.append("reload")
        wait_until(lambda: len(publisher.ids) >= 70, 30, message="70 events before the restart")
        reader.stop()  # SIGTERM: streams end with a retry hint; then the relay is down a while
        time.sleep(0.5)
        reader.start()
        restarts.append("restart")

    events: list = []
    failures: list = []

    def read():
        try:
            events.extend(follow(f"{reader.url}/events/steady", 150, timeout=60))
        except AssertionError as exc:
            failures.append(exc)

    following = threading.Thread(target=read, daemon=True)
    following.start()
    # Barrier: publish only once the reader's stream is subscribed (the first event has no
    # Last-Event-ID to be replayed from, so one published earlier would be missed, not lost).
    wait_until(lambda: sse_clients(reader) == 1, 10, message="the reader to be subscribed")
    publisher.start()
    restarter = threading.Thread(target=restart_reader, daemon=True)
    restarter.start()
    following.join(65)
    publisher.join(10)
    restarter.join(10)
    assert not failures, failures[0]
    assert restarts == ["reload", "restart"]
    assert [e.id for e in events] == publisher.ids  # every event, once, in order
    assert [e.json() for e in events] == list(range(150))


def test_metrics_add_up_across_workers(relay_server_factory, redis_server):
    server = relay_server_factory(config(redis_server), workers=2)
    streams, pids = [], set()
    for _ in range(40):  # streams on both workers
        stream = server.sse("/events/count")
        streams.append(stream)
        pids.add(stream.response_headers["x-relay-worker"])
        if len(pids) == 2 and len(streams) >= 4:
            break
    assert len(pids) == 2
    for i in range(3):
        server.publish("count", "n", i)
    for stream in streams:
        stream.events(3, 10)

    def figures():
        text = http_request(f"{server.url}/metrics")[2].decode()
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(relay_\S+) (\S+)$", text, re.M)}

    # Each worker delivered to its own streams: the sum is every stream times every event.
    wait_until(lambda: figures().get('relay_events_out_total{sink="sse"}') == 3 * len(streams), 10,
               message="events_out summed over both workers")
    got = figures()
    assert got["relay_sse_clients"] == len(streams)
    assert got['relay_source_up{source="redis-backbone"}'] == 1.0
    for stream in streams:
        stream.close()
