"""The SSE write path under gunicorn: live events written to the socket from the hub
(plugins.sse_writer), handed to the stream's greenlet when the socket cannot take them whole.

Every test reads the wire itself and checks the HTTP chunked framing byte for byte: a direct
write that interleaved with gunicorn's, or split a chunk, fails here.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from chunked_support import take_chunks
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.testing import RelayServer, http_request, wait_until

HEARTBEAT = 0.2  # short, so heartbeats (the stream's own writes) land between direct writes


class WireReader:
    """A stream read off the socket, strictly: the chunked framing checked, the events parsed."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None, http10: bool = False):
        self.sock = socket.socket()
        if rcvbuf:  # a small window: relay's writes stop fitting in the kernel's buffers
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        version = "1.0" if http10 else "1.1"
        self.sock.sendall(f"GET {path} HTTP/{version}\r\nHost: test\r\n\r\n".encode())
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            self.raw += self._recv(65536)
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        assert head.startswith(f"HTTP/{version} 200".encode()), head
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        self.body = b""  # the body with its framing removed, not yet parsed into events
        self.events: list[tuple[str, str]] = []  # (event, data)
        self.comments: list[tuple[float, str]] = []  # (when, text)
        self.retries: list[int] = []  # for each retry frame, how many events came before it
        self.ended = False

    def _recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        if not data:
            self.ended = True
        return data

    def read(self, size: int = 1 << 20, timeout: float = 10.0) -> None:
        """One read of at most ``size`` bytes, then everything complete in what came is parsed."""
        self.sock.settimeout(timeout)
        self.raw += self._recv(size)
        self._unframe()
        self._parse()

    def _unframe(self) -> None:
        if not self.chunked:
            self.body, self.raw = self.body + self.raw, b""
            return
        body, self.raw, ended = take_chunks(self.raw)
        self.body += body
        self.ended = self.ended or ended

    def _parse(self) -> None:
        while b"\n\n" in self.body:
            block, self.body = self.body.split(b"\n\n", 1)
            lines = block.decode("utf-8").split("\n")
            if all(line.startswith(":") for line in lines):
                self.comments.append((time.monotonic(), lines[0][1:].strip()))
                continue
            fields = [line.partition(": ") for line in lines]
            if fields[0][0] == "retry":
                assert lines == ["retry: 3000"], lines
                self.retries.append(len(self.events))
                continue
            name = next((value for key, _, value in fields if key == "event"), "message")
            data = "\n".join(value for key, _, value in fields if key == "data")
            self.events.append((name, data))

    def wait_live(self, timeout: float = 5.0) -> None:
        """Read until the stream's opening retry frame has come (it may have come with the headers)."""
        self._unframe()
        self._parse()
        deadline = time.monotonic() + timeout
        while not self.retries:
            assert time.monotonic() < deadline and not self.ended, "no retry frame"
            self.read(timeout=max(0.01, deadline - time.monotonic()))

    def read_events(self, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and not self.ended:
            assert time.monotonic() < deadline, f"{len(self.events)} of {count} events within {timeout} s"
            self.read(timeout=max(0.01, deadline - time.monotonic()))
        return self.events

    def close(self) -> None:
        self.sock.close()


def sse_health(server) -> dict:
    return server.health()["components"]["sse"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    relay = RelayServer({"sinks": {"sse": {"heartbeat": HEARTBEAT, "max_connections_per_address": 0}}},
                        directory=tmp_path_factory.mktemp("relay")).start()
    yield relay
    relay.stop()


@pytest.mark.timeout(60)
def test_live_events_are_written_directly_whole_and_in_order(server):
    readers = [WireReader(server.port, "/events/direct") for _ in range(3)]
    try:
        wait_until(lambda: sse_health(server)["clients"] >= 3, 5, message="three streams")
        before = sse_health(server)["direct_writes"]
        for i in range(40):
            server.publish("direct", "tick", {"i": i, "pad": "é" * (i * 37)})
        for reader in readers:
            events = reader.read_events(40)
            assert [json.loads(data)["i"] for _, data in events] == list(range(40))
            assert {name for name, _ in events} == {"tick"}
        # Written by the hub, not by the streams' greenlets (each write: one event or more).
        assert sse_health(server)["direct_writes"] - before >= 3
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.timeout(60)
def test_a_client_that_reads_slowly_gets_every_frame_once_in_order(server):
    """Writes the socket cannot take whole go to the stream's greenlet, which finishes them and
    writes what queued meanwhile before direct writes resume: nothing lost, nothing reordered."""
    reader = WireReader(server.port, "/events/slow-reader", rcvbuf=4096)
    try:
        wait_until(lambda: sse_health(server)["clients"] >= 1, 5, message="the stream")
        before = sse_health(server)["direct_writes_handed_over"]
        count, blob = 150, "y" * 50_000
        for i in range(count):  # ~7.5 MB, more than the kernel buffers while nobody reads
            server.publish("slow-reader", "blob", {"i": i, "blob": blob})
        for _ in range(200):
            reader.read(size=2048)  # slowly, then all at once
            time.sleep(0.002)
        events = reader.read_events(count, timeout=30)
        assert [json.loads(data)["i"] for _, data in events] == list(range(count))
        assert all(json.loads(data)["blob"] == blob for _, data in events)
        assert sse_health(server)["direct_writes_handed_over"] > before, "no write was handed to the stream"
        # Caught up: the next event is a direct write again.
        writes = sse_health(server)["direct_writes"]
        server.publish("slow-reader", "blob", {"i": count, "blob": "z"})
        assert json.loads(reader.read_events(count + 1)[-1][1])["i"] == count
        assert sse_health(server)["direct_writes"] > writes
    finally:
        reader.close()


@given(sizes=st.lists(st.one_of(st.integers(0, 300), st.integers(20_000, 60_000)), min_size=1, max_size=80),
       pauses=st.lists(st.sampled_from([0, 0, 0.001, 0.01, 0.05]), min_size=1, max_size=10),
       reads=st.lists(st.integers(1, 20_000), min_size=1, max_size=10),
       head_start=st.sampled_from([0, 0.1, 0.5]))
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@pytest.mark.timeout(240)
def test_any_sizes_and_timings_arrive_once_in_order_with_intact_chunks(server, sizes, pauses, reads, head_start):
    """Events of random sizes, published with random pauses, to a reader reading random amounts
    with a small window: direct writes, coalesced writes and heartbeats interleave through real
    gunicorn, and the wire stays exact. (Loopback's send buffers grow to megabytes, so partial
    writes are rare here: tests/test_sse_write_path_ownership.py forces them with small buffers.)"""
    channel = f"hyp-{time.monotonic_ns()}"
    reader = WireReader(server.port, f"/events/{channel}", rcvbuf=8192)
    try:
        reader.wait_live()  # the retry frame: the stream is live
        handed_over = sse_health(server)["direct_writes_handed_over"]
        # Multi-byte text too: a frame's length in bytes is what its chunk size must say.
        expected = [f"{i}:" + "é" * (size % 7) + "x" * size for i, size in enumerate(sizes)]
        failures = []

        def publish_all():
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # kept alive: fast
            try:
                for i, data in enumerate(expected):
                    connection.request("POST", f"/events/{channel}", json.dumps({"event": "e", "data": data}),
                                       {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    assert response.status == 202, response.status
                    time.sleep(pauses[i % len(pauses)])
            except Exception as exc:  # noqa: BLE001 - reported by the reading loop
                failures.append(exc)
            finally:
                connection.close()

        publisher = threading.Thread(target=publish_all, daemon=True)
        publisher.start()
        time.sleep(head_start)  # the publisher gets ahead: the socket fills, writes are handed over
        deadline = time.monotonic() + 30
        step = 0
        while len(reader.events) < len(expected):
            assert not failures, failures
            assert time.monotonic() < deadline and not reader.ended, f"{len(reader.events)} of {len(expected)}"
            reader.read(size=reads[step % len(reads)])
            if step < 2 * len(pauses):  # slow at first, then catching up
                time.sleep(pauses[step % len(pauses)])
            step += 1
        publisher.join(30)
        assert [data for _, data in reader.events] == expected
        event(f"a write handed to the stream: {sse_health(server)['direct_writes_handed_over'] > handed_over}")
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_heartbeats_count_silence_from_the_last_direct_write(relay_server_factory):
    beat = 1.0
    server = relay_server_factory({"sinks": {"sse": {"heartbeat": beat}}})
    reader = WireReader(server.port, "/events/beats")
    try:
        reader.wait_live()
        start, arrivals = time.monotonic(), []
        for i in range(25):  # 2.4 s of events, 0.1 s apart: never beat seconds of silence
            time.sleep(max(0.0, start + 0.1 * i - time.monotonic()))
            server.publish("beats", "tick", i)
            reader.read_events(i + 1)
            arrivals.append(time.monotonic())
        # The last event comes mid-way between two of the stream's timer ticks (every beat seconds
        # since it started waiting): a heartbeat timed from the tick would come ~1.6 s after it.
        last = arrivals[-1]
        longest = max(b - a for a, b in zip(arrivals, arrivals[1:]))
        assert reader.comments == [] or longest > beat * 0.8, \
            f"a heartbeat while events were flowing ({longest:.2f} s at most between two)"
        assert sse_health(server)["direct_writes"] >= 25
        deadline = last + 5
        while not reader.comments and time.monotonic() < deadline:
            reader.read(timeout=deadline - time.monotonic())
        assert reader.comments, "no heartbeat after the events stopped"
        when, text = reader.comments[0]
        assert text == "heartbeat"
        assert beat * 0.8 <= when - last <= beat * 1.3, f"heartbeat {when - last:.2f} s after the last event"
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_http10_streams_are_written_unchunked(server):
    # gunicorn answers HTTP/1.0 without chunks (and closes at the end): direct writes follow it.
    reader = WireReader(server.port, "/events/old-client", http10=True)
    try:
        assert not reader.chunked
        reader.wait_live()
        before = sse_health(server)["direct_writes"]
        for i in range(5):
            server.publish("old-client", "tick", i)
        assert [data for _, data in reader.read_events(5)] == ["0", "1", "2", "3", "4"]
        assert sse_health(server)["direct_writes"] > before
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_shutdown_retry_frame_follows_whole_frames(relay_server_factory):
    server = relay_server_factory()
    reader = WireReader(server.port, "/events/bye", rcvbuf=4096)
    try:
        reader.wait_live()
        for i in range(20):  # queued and half-written when the worker stops
            server.publish("bye", "blob", {"i": i, "blob": "w" * 20_000})
        server.process.send_signal(15)
        while not reader.ended:
            reader.read(size=4096, timeout=10)
        ids = [json.loads(data)["i"] for _, data in reader.events]
        assert ids == list(range(len(ids)))  # a prefix, in order; the rest resumes with Last-Event-ID
        # The connect's retry frame, then the shutdown's after the last whole event, then the end.
        assert reader.retries == [0, len(ids)] and reader.body == b"", (reader.retries, reader.body[:80])
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_a_hangup_during_direct_writes_removes_the_stream(server):
    reader = WireReader(server.port, "/events/gone")
    reader.wait_live()
    wait_until(lambda: sse_health(server)["clients"] >= 1, 5, message="the stream")
    clients = sse_health(server)["clients"]
    server.publish("gone", "tick", 0)
    reader.close()
    for i in range(1, 20):  # written to a socket whose client has gone
        server.publish("gone", "tick", i)
    wait_until(lambda: sse_health(server)["clients"] == clients - 1, 5, message="the stream removed")
    status, _, _ = http_request(f"{server.url}/healthz")
    assert status == 200
