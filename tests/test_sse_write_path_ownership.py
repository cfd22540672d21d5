"""One owner of a stream's socket at any moment: the hub's direct writes (plugins.sse_writer)
and the stream's own writes never interleave, whatever the timing.

The timings that break it are too rare to hit reliably over HTTP, so these tests make them
happen: a real app's SSE hub, a real TCP connection with small buffers, and the stream's
generator driven the way gunicorn drives it (each yielded item written as an HTTP chunk before the
generator resumes), with a write that stops half-way, as gevent's ``sendall`` does when the
socket is full.
"""

from __future__ import annotations

import os
import re
import socket as std_socket
import time
from types import SimpleNamespace

import gevent
import gevent.event
import gevent.socket
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from relay.event import Event

HEARTBEAT = 0.1


@pytest.fixture
def hub(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    from relay.app import create_app

    app = create_app({"data_dir": str(tmp_path / "data"), "sinks": {"sse": {"heartbeat": HEARTBEAT}}})
    relay = app.extensions["relay"]
    yield relay.extensions["sse"]
    relay.stop()


@pytest.fixture
def connection():
    """(server side, client side) of a loopback TCP connection with small kernel buffers."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.socket()
    client.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_SNDBUF, 4096)
    listener.close()
    yield server, client
    server.close()
    client.close()


def direct_client(hub, sock):
    """A live stream's client whose events the hub writes directly, as under gunicorn."""
    from plugins.sse import Client
    from plugins.sse_writer import DirectWriter

    client = Client(["c"], 100, sock)
    if hub.writer is None:
        hub.writer = DirectWriter(hub._frames_of, hub.latency)
    client.raw, client.chunked, client._writer = sock._sock, True, hub.writer
    client.server_response = SimpleNamespace(sent=0)  # gunicorn's Response: its count of body bytes
    return client


def serve(stream, sock, mid_write: gevent.event.Event | None = None):
    """gunicorn's loop: each item as one chunk, before the generator resumes; with ``mid_write``,
    every write stops half-way for a while (a full socket) and says so."""
    for item in stream:
        chunk = b"%X\r\n%b\r\n" % (len(item), item)
        half = len(chunk) // 2
        sock.sendall(chunk[:half])
        if mid_write is not None:
            mid_write.set()
            gevent.sleep(0.05)
        sock.sendall(chunk[half:])


def read_blocks(sock, count: int, timeout: float = 10.0) -> list[bytes]:
    """The next ``count`` SSE blocks (after ``retry``-less streams: events and comments), with the
    chunked framing checked byte for byte."""
    raw, body, blocks = b"", b"", []
    with gevent.Timeout(timeout):
        while len(blocks) < count:
            data = sock.recv(65536)
            assert data, "the connection ended"
            raw += data
            while (line_end := raw.find(b"\r\n")) >= 0:
                assert re.fullmatch(rb"[0-9A-F]+", raw[:line_end]), f"bad chunk size line {raw[:40]!r}"
                size = int(raw[:line_end], 16)
                if len(raw) < line_end + 2 + size + 2:
                    break
                assert raw[line_end + 2 + size:line_end + 4 + size] == b"\r\n", "a chunk ends off its size"
                body += raw[line_end + 2:line_end + 2 + size]
                raw = raw[line_end + 4 + size:]
            *done, body = body.split(b"\n\n")
            blocks += done
    return blocks


def event(n: int, size: int = 10) -> Event:
    return Event("c", "e", f"{n}:" + "x" * size, id=f"id-{n}")


@pytest.mark.timeout(30)
def test_no_direct_write_while_the_stream_writes_a_heartbeat(hub, connection):
    server, reader = connection
    client = direct_client(hub, server)
    mid_write = gevent.event.Event()
    stream = gevent.spawn(serve, hub._live(client, set()), server, mid_write)
    try:
        gevent.sleep(0.01)
        assert client.direct  # parked, waiting: the hub may write
        assert mid_write.wait(5)  # the heartbeat is being written, half-way
        assert not client.direct
        client.offer("c", event(1))  # must wait for the heartbeat's second half
        gevent.sleep(0.2)
        blocks = read_blocks(reader, 2)
        assert blocks[0] == b": heartbeat"
        assert blocks[1].endswith(b"data: 1:xxxxxxxxxx")
    finally:
        client.close("left")
        stream.kill()


@pytest.mark.timeout(30)
def test_what_a_direct_write_left_goes_out_before_what_queued_after_it(hub, connection):
    server, reader = connection
    client = direct_client(hub, server)
    stream = gevent.spawn(serve, hub._live(client, set()), server)
    try:
        gevent.sleep(0.01)
        assert client.direct
        writes, handed_over = hub.writer.writes, hub.writer.handed_over
        client.offer("c", event(1, size=300_000))  # more than the socket takes at once
        gevent.sleep(0)  # the hub's flush runs: a partial write, handed to the stream...
        assert hub.writer.writes == writes + 1 and hub.writer.handed_over == handed_over + 1
        assert client.unsent and not client.direct
        client.offer("c", event(2))  # ...and this one queues before the stream has resumed
        blocks = read_blocks(reader, 2)
        assert blocks[0].endswith(b"x" * 1000) and blocks[0].startswith(b"id: id-1\n")
        assert blocks[1] == b"id: id-2\nevent: e\ndata: 2:xxxxxxxxxx"
        gevent.sleep(0.01)
        assert client.direct  # caught up: direct writes again
        client.offer("c", event(3))
        assert read_blocks(reader, 1) == [b"id: id-3\nevent: e\ndata: 3:xxxxxxxxxx"]
        assert hub.writer.writes == writes + 2
    finally:
        client.close("left")
        stream.kill()


@pytest.mark.timeout(30)
def test_a_closed_stream_gets_no_direct_write(hub, connection):
    server, reader = connection
    client = direct_client(hub, server)
    stream = gevent.spawn(serve, hub._live(client, set()), server)
    gevent.sleep(0.01)
    client.offer("c", event(1))
    client.close("shutdown")  # in the same iteration: the retry frame must be the last bytes
    stream.join(5)
    assert stream.dead
    client.offer("c", event(2))
    gevent.sleep(0.01)
    server.shutdown(std_socket.SHUT_WR)
    data = b""
    with gevent.Timeout(5):
        while chunk := reader.recv(65536):
            data += chunk
    assert data == b"D\r\nretry: 3000\n\n\r\n"


@given(steps=st.lists(st.one_of(
           st.tuples(st.just("offer"), st.one_of(st.integers(0, 100), st.integers(1000, 40_000))),
           st.tuples(st.just("batch"), st.lists(st.integers(0, 5000), min_size=1, max_size=8)),
           st.tuples(st.just("sleep"), st.sampled_from([0, 0, 0.001, 0.02, 0.12]))), min_size=1, max_size=60),
       reads=st.lists(st.tuples(st.integers(1, 30_000), st.sampled_from([0, 0, 0.001, 0.01, 0.05])),
                      min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@pytest.mark.timeout(240)
def test_any_events_and_timings_arrive_once_in_order_in_whole_chunks(hub, steps, reads):
    """Events of any size, alone or in batches, offered at any moments to a reader reading any
    amounts at any pace through small buffers: direct writes, partial writes finished by the
    stream, queued writes and heartbeats interleave, and every frame arrives once, in order,
    in intact chunks."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    reader = gevent.socket.socket()
    reader.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_RCVBUF, 4096)
    reader.connect(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_SNDBUF, 4096)
    listener.close()
    client = direct_client(hub, server)
    client.limit = 100_000
    stream = gevent.spawn(serve, hub._live(client, set()), server)
    handed_over = hub.writer.handed_over
    expected, received = [], []

    def read_all():
        raw, body, step, progress = b"", b"", 0, time.monotonic()
        # Until every frame has come, or none for 2 s once all were offered (the heartbeats, every
        # 0.1 s, end a read that waits meanwhile).
        while not (done.is_set() and (len(received) >= len(expected) or time.monotonic() - progress > 2)):
            size, pause = reads[step % len(reads)]
            step += 1
            data = reader.recv(size)
            assert data, "the connection ended"
            raw += data
            while (line_end := raw.find(b"\r\n")) >= 0:
                assert re.fullmatch(rb"[0-9A-F]+", raw[:line_end]), f"bad chunk size line {raw[:40]!r}"
                length = int(raw[:line_end], 16)
                if len(raw) < line_end + 4 + length:
                    break
                assert raw[line_end + 2 + length:line_end + 4 + length] == b"\r\n", "a chunk ends off its size"
                body += raw[line_end + 2:line_end + 2 + length]
                raw = raw[line_end + 4 + length:]
            *blocks, body = body.split(b"\n\n")
            frames = [block for block in blocks if not block.startswith(b":")]
            if frames:
                received.extend(frames)
                progress = time.monotonic()
            if pause and step < 50:
                gevent.sleep(pause)

    done = gevent.event.Event()
    reading = gevent.spawn(read_all)
    try:
        gevent.sleep(0.005)
        for kind, value in steps:
            if kind == "sleep":
                gevent.sleep(value)
                continue
            sizes = [value] if kind == "offer" else value
            events = [event(len(expected) + i, size) for i, size in enumerate(sizes)]
            expected.extend(e.frame[:-2] for e in events)
            if kind == "offer":
                client.offer("c", events[0])
            else:
                client.offer_batch("c", events)
        done.set()
        reading.join(20)
        assert reading.dead, f"{len(received)} of {len(expected)} frames within 20 s"
        reading.get()  # re-raises what failed in the reader
        assert received == expected
        assert not client.closed
        hypothesis_event(f"a write handed to the stream: {hub.writer.handed_over > handed_over}")
    finally:
        client.close("left")
        stream.kill()
        reading.kill()
        server.close()
        reader.close()
