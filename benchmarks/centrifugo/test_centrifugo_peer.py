"""Checks of the Centrifugo peer's harness (benchmarks are not tests; these check the measuring).

    python -m pytest benchmarks/centrifugo/test_centrifugo_peer.py -q -p no:cacheprovider

1. The load client reads events that a chunked response cuts anywhere (Go's net/http does),
   from a real HTTP server on a free port.
2. The whole harness measures a real Centrifugo at a trivial size: published through its HTTP API,
   delivered through its Redis engine and uni_sse, every delivery counted (needs the binary:
   benchmarks/centrifugo/install.sh; skipped without it).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import servers
from benchmarks.loadgen import BODY, LoadClient

LO, COUNT, CLIENTS = 1000, 400, 3


def _event(seq: int) -> bytes:
    data = json.dumps({"seq": seq, "ts": time.time(), "body": BODY}, separators=(",", ":"))
    return b'data: {"channel":"bench","pub":{"data":%s}}\n\n' % data.encode()


def _chunked(body: bytes, rng: random.Random) -> bytes:
    """``body`` as HTTP chunks cut at Go's 2 KB and at random places, mid-event included."""
    out, pos = [], 0
    while pos < len(body):
        size = rng.choice([2048, 1, 2, 3, 17, 150, 999])
        piece = body[pos:pos + size]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        pos += size
    return b"".join(out)


class ChunkedSSEServer:
    """Answers every GET with a chunked event stream; ``send()`` writes COUNT events to each."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + _chunked(b"\r\n" + b'data: {"connect":{"client":"x"}}\n\n', random.Random(0)))
            self.conns.append(conn)

    def send(self, seed: int):
        body = b"".join(_event(LO + i) for i in range(COUNT))
        for n, conn in enumerate(self.conns):
            if n == 0:  # one whole event per chunk, a chunk per send: mostly one chunk per read
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(COUNT):
                    event = _event(LO + i)
                    conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                    if i % 20 == 0:
                        time.sleep(0.001)
                continue
            wire = _chunked(body, random.Random(seed + n))
            rng = random.Random(seed)
            pos = 0
            while pos < len(wire):  # in reads of any size too
                step = rng.randint(1, 4000)
                conn.sendall(wire[pos:pos + step])
                pos += step

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.timeout(60)
def test_load_client_reads_events_split_across_chunks():
    server = ChunkedSSEServer()
    load = LoadClient("127.0.0.1", server.port, "/connection/uni_sse", processes=1, chunked=True)
    try:
        assert load.connect(CLIENTS, timeout=10)["ok"] == CLIENTS
        deadline = time.time() + 10
        while len(server.conns) < CLIENTS and time.time() < deadline:
            time.sleep(0.05)
        load.record(LO, LO + COUNT)
        server.send(seed=7)
        deadline = time.time() + 20
        while load.progress()[0] < CLIENTS * COUNT and time.time() < deadline:
            time.sleep(0.05)
        got = load.collect()
    finally:
        load.close()
        server.close()
    assert got.received == CLIENTS * COUNT
    assert got.out_of_order == 0 and got.duplicates == 0
    assert got.open == CLIENTS and got.closed_by_server == 0


@pytest.mark.timeout(120)
def test_harness_measures_centrifugo_at_a_trivial_size(tmp_path):
    if not servers.centrifugo_binary():
        pytest.fail(servers.centrifugo_missing(), pytrace=False)  # a check run by hand: the peer must be there
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--systems", "centrifugo", "--scenarios",
         "fanout-100x200", "--clients", "5", "--seconds", "0.2", "--processes", "2", "--drain", "5",
         "--passes", "1", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    peer = result["scenarios"]["fanout-100x200"]["centrifugo"]
    assert "error" not in peer, peer
    run = peer["run"]
    assert peer["clients"] == 5 and run["messages"] == 20
    assert run["expected"] == 100 and run["received"] == 100 and run["lost"] == 0
    assert run["out_of_order"] == 0 and run["duplicates"] == 0
    assert run["api_unanswered"] == 0 and run["api_answers_after_s"] >= 0  # published through its API
    assert peer["redis_connections"] >= 1  # its Redis engine is on the benchmark's redis-server
    assert "centrifugo" in proc.stdout and "p99 latency" in proc.stdout
