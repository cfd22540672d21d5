"""The load client: N SSE connections spread over several processes, and a paced publisher (Redis or HTTP).

Each worker process runs one event loop (uvloop when installed, else asyncio's) with a raw
``asyncio.Protocol`` per connection and a tiny parser: it never decodes SSE fully, it finds the
``"seq": N, "ts": T`` pair of each complete event with one regular expression over everything
received since the last blank line. Per delivery it keeps the latency (receive time minus the
send timestamp in the payload) and checks the sequence number against the connection's last one.

The coordinator (:class:`LoadClient`) talks to the workers over pipes: connect N, record a range
of sequence numbers, report progress, collect the figures, quit.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import socket
import time
from array import array
from dataclasses import dataclass

from benchmarks import procstat

SEQ_TS = re.compile(rb'"seq": ?(\d+), ?"ts": ?([0-9.]+)')
CONNECT_CONCURRENCY = 64  # handshakes in flight per worker


# -- worker side --------------------------------------------------------------------------------

class _State:
    def __init__(self):
        self.lo = self.hi = 0
        self.reset()
        self.open = 0
        self.closed_by_server = 0

    def reset(self):
        self.received = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.latencies = array("d")
        self.first_rx = 0.0
        self.last_rx = 0.0


class _SSEProtocol(asyncio.Protocol):
    __slots__ = ("buf", "closing", "count", "head", "last", "ready", "request", "st", "status", "transport")

    def __init__(self, st: _State, request: bytes, ready: asyncio.Future):
        self.st, self.request, self.ready = st, request, ready
        self.transport = None
        self.head = b""
        self.buf = b""
        self.last = -1
        self.count = 0
        self.status = 0
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes):
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                self.status = int(self.head[9:12])
            except ValueError:
                self.status = -1
            data, self.head = self.head[end + 4:], None
            if not self.ready.done():
                self.ready.set_result(self.status)
            if self.status != 200:
                self.transport.close()
                return
            self.st.open += 1
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 2:]
        matches = SEQ_TS.findall(buf, 0, cut)
        if not matches:
            return
        st = self.st
        now = time.time()
        lo, hi, last, n = st.lo, st.hi, self.last, 0
        add = st.latencies.append
        for s, t in matches:
            s = int(s)
            if s < lo or s >= hi:
                continue
            if s <= last:
                if s == last:
                    st.duplicates += 1
                else:
                    st.out_of_order += 1
            else:
                last = s
            add(now - float(t))
            n += 1
        if n:
            self.last = last
            self.count += n
            st.received += n
            if not st.first_rx:
                st.first_rx = now
            st.last_rx = now

    def connection_lost(self, exc):
        if self.head is None and self.status == 200:
            self.st.open -= 1
            if not self.closing:
                self.st.closed_by_server += 1
        if not self.ready.done():
            self.ready.set_result(0)


class _ChunkedSSEProtocol(_SSEProtocol):
    """The same, for a server whose chunked response may split an event between two chunks
    (Go's net/http, used by Centrifugo, cuts a chunk wherever its 2 KB buffer fills): the chunk
    framing is removed before the events are parsed. Centrifugo's uni_sse events are
    ``data: {"channel":"bench","pub":{"data":<the published data>}}``: the published JSON is kept
    byte for byte, so the same ``"seq"``/``"ts"`` expression reads it."""

    __slots__ = ("chunk_left", "chunk_pending", "chunk_skip", "dechunk")

    def __init__(self, st: _State, request: bytes, ready: asyncio.Future):
        super().__init__(st, request, ready)
        self.chunk_left = 0  # bytes of the current chunk still to come
        self.chunk_skip = 0  # bytes of the CRLF after a chunk's data still to skip
        self.chunk_pending = b""  # an incomplete chunk-size line
        self.dechunk = False

    def data_received(self, data: bytes):
        if self.head is not None:
            seen = len(self.head)
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            split = end + 4 - seen
            super().data_received(data[:split])  # status line and headers only
            if self.head is not None or self.status != 200:
                return
            self.dechunk = b"\r\ntransfer-encoding: chunked" in head[:end + 2].lower()
            data = data[split:]
        if self.dechunk:
            if not (self.chunk_left or self.chunk_skip or self.chunk_pending):
                # The common read: exactly one whole chunk.
                eol = data.find(b"\r\n", 0, 10)
                if eol > 0:
                    try:
                        end = eol + 2 + int(data[:eol], 16)
                    except ValueError:
                        end = -1
                    if end > eol + 2 and len(data) == end + 2 and data.endswith(b"\r\n"):
                        _SSEProtocol.data_received(self, data[eol + 2:end])
                        return
            data = self._unchunk(data)
        if data:
            _SSEProtocol.data_received(self, data)

    def _unchunk(self, data: bytes) -> bytes:
        if self.chunk_pending:
            data, self.chunk_pending = self.chunk_pending + data, b""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.chunk_skip = 2
            elif self.chunk_skip:
                take = min(self.chunk_skip, n - pos)
                pos += take
                self.chunk_skip -= take
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.chunk_pending = data[pos:]
                    break
                size = int(data[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if not size:  # the last chunk: the response is over
                    break
                self.chunk_left = size
        return b"".join(out)


def _worker(pipe, host: str, port: int, path: str, cpus=None, chunked: bool = False) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
        loop_name = "uvloop"
    except ImportError:
        loop = asyncio.new_event_loop()
        loop_name = "asyncio"
    asyncio.set_event_loop(loop)
    st = _State()
    protocols: list[_SSEProtocol] = []
    protocol = _ChunkedSSEProtocol if chunked else _SSEProtocol
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
               "Cache-Control: no-cache\r\n\r\n").encode()

    def reply(message) -> None:
        # The loop made the pipe non-blocking (add_reader); a large answer must still go whole.
        os.set_blocking(pipe.fileno(), True)
        try:
            pipe.send(message)
        finally:
            os.set_blocking(pipe.fileno(), False)

    async def open_one(sem: asyncio.Semaphore, timeout: float, header_wait: float, statuses: list):
        async with sem:
            ready = loop.create_future()
            made: list[_SSEProtocol] = []

            def factory():
                proto = protocol(st, request, ready)
                protocols.append(proto)
                made.append(proto)
                return proto

            try:
                await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
                try:
                    status = await asyncio.wait_for(asyncio.shield(ready), header_wait)
                except TimeoutError:
                    # Some servers (Flask-SSE) send their headers with the first event only: the
                    # connection is open and the request sent; the caller checks the server's side.
                    status = "pending"
            except (TimeoutError, OSError) as exc:
                statuses.append(type(exc).__name__)
                return
            except asyncio.CancelledError:  # the connect phase's deadline: give this one up
                for proto in made:
                    if proto.transport is not None:
                        proto.closing = True
                        proto.transport.close()
                raise
            statuses.append(status)

    async def connect(n: int, timeout: float, header_wait: float):
        """Open ``n`` connections, at most CONNECT_CONCURRENCY at a time, within ``timeout`` in all."""
        started = time.monotonic()
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        statuses: list = []
        tasks = [loop.create_task(open_one(sem, timeout, header_wait, statuses)) for _ in range(n)]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout + header_wait + 2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        elapsed = time.monotonic() - started
        ok = statuses.count(200) + statuses.count("pending")
        errors: dict[str, int] = {}
        for s in statuses:
            if s not in (200, "pending"):
                errors[str(s)] = errors.get(str(s), 0) + 1
        if n - len(statuses):
            errors["deadline"] = n - len(statuses)
        reply(("connected", ok, n - ok, errors, elapsed, statuses.count("pending")))

    def on_command():
        try:
            cmd, *args = pipe.recv()
        except (EOFError, OSError):  # the coordinator is gone: close everything and end
            cmd, args = "quit", []
        if cmd == "connect":
            loop.create_task(connect(*args))
        elif cmd == "record":
            st.lo, st.hi = args
            st.reset()
            reply(("ok",))
        elif cmd == "progress":
            reply(("progress", st.received, st.last_rx, st.open))
        elif cmd == "collect":
            reply(("collect", {
                "received": st.received, "out_of_order": st.out_of_order, "duplicates": st.duplicates,
                "first_rx": st.first_rx, "last_rx": st.last_rx, "open": st.open,
                "closed_by_server": st.closed_by_server, "latencies": st.latencies.tobytes(),
                "loop": loop_name,
            }))
        elif cmd == "quit":
            for task in asyncio.all_tasks(loop):
                task.cancel()
            for proto in protocols:
                if proto.transport is not None:
                    proto.closing = True
                    proto.transport.close()
            loop.call_later(0.2, loop.stop)

    loop.add_reader(pipe.fileno(), on_command)
    try:
        loop.run_forever()
    finally:
        loop.close()


# -- coordinator side ---------------------------------------------------------------------------

@dataclass
class Collected:
    received: int
    out_of_order: int
    duplicates: int
    first_rx: float
    last_rx: float
    open: int
    closed_by_server: int
    latencies: array
    loop: str


class LoadClient:
    """``processes`` worker processes holding SSE connections to ``http://host:port{path}``."""

    def __init__(self, host: str, port: int, path: str, processes: int = 3, cpus=None, chunked: bool = False):
        """``chunked``: undo HTTP chunking before parsing (servers that split events across chunks)."""
        ctx = multiprocessing.get_context("fork")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, host, port, path, cpus, chunked), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.connected = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pids)

    def _ask(self, message, timeout: float = 30.0):
        for pipe in self.pipes:
            pipe.send(message)
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"load worker did not answer {message[0]!r} within {timeout}s")
            answers.append(pipe.recv())
        return answers

    def connect(self, n: int, timeout: float = 20.0, header_wait: float | None = None) -> dict:
        """Open ``n`` more connections (spread evenly); returns ok, failed, seconds, errors.

        A connection is ok when the server answered 200, or, after ``header_wait`` seconds
        without an answer, when it is still open ("pending": headers come with the first event).
        """
        shares = [n // len(self.pipes) + (1 if i < n % len(self.pipes) else 0) for i in range(len(self.pipes))]
        started = time.monotonic()
        for pipe, share in zip(self.pipes, shares):
            pipe.send(("connect", share, timeout, timeout if header_wait is None else header_wait))
        ok = failed = pending = 0
        errors: dict[str, int] = {}
        for pipe in self.pipes:
            if not pipe.poll(timeout * 4 + 30):
                raise TimeoutError("load worker did not finish connecting")
            _, w_ok, w_failed, w_errors, _, w_pending = pipe.recv()
            ok += w_ok
            pending += w_pending
            failed += w_failed
            for k, v in w_errors.items():
                errors[k] = errors.get(k, 0) + v
        self.connected += ok
        return {"ok": ok, "failed": failed, "pending": pending, "seconds": time.monotonic() - started,
                "errors": errors}

    def record(self, lo: int, hi: int) -> None:
        self._ask(("record", lo, hi))

    def progress(self) -> tuple[int, float, int]:
        received = last = opened = 0
        for _, r, l, o in self._ask(("progress",)):
            received += r
            last = max(last, l)
            opened += o
        return received, last, opened

    def collect(self) -> Collected:
        out = Collected(0, 0, 0, 0.0, 0.0, 0, 0, array("d"), "")
        firsts = []
        for _, c in self._ask(("collect",), timeout=60):
            out.received += c["received"]
            out.out_of_order += c["out_of_order"]
            out.duplicates += c["duplicates"]
            if c["first_rx"]:
                firsts.append(c["first_rx"])
            out.last_rx = max(out.last_rx, c["last_rx"])
            out.open += c["open"]
            out.closed_by_server += c["closed_by_server"]
            lat = array("d")
            lat.frombytes(c["latencies"])
            out.latencies.extend(lat)
            out.loop = c["loop"]
        out.first_rx = min(firsts) if firsts else 0.0
        return out

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)


# -- publisher ----------------------------------------------------------------------------------

BODY = "x" * 64  # a payload about the size of a chat message or a small state change


def bare_data(seq: int, ts: float) -> str:
    """The data alone, for a system that gets it through its own publish API (Centrifugo)."""
    return json.dumps({"seq": seq, "ts": ts, "body": BODY}, separators=(",", ":"))


def payload(system: str, seq: int, ts: float) -> str:
    data = {"seq": seq, "ts": ts, "body": BODY}
    if system == "flask-sse":  # what flask_sse.sse.publish() writes
        return json.dumps({"data": data, "type": "bench"}, separators=(",", ":"))
    return json.dumps({"event": "bench", "data": data}, separators=(",", ":"))  # relay's envelope


@dataclass(frozen=True)
class HTTPTarget:
    """Where and how the publisher POSTs each message when a system is published to over HTTP.

    :param port: the server's port on 127.0.0.1.
    :param path: the publish endpoint (Centrifugo's ``/api/publish``, relay's ``/events/<channel>``).
    :param headers: sent with every request (an API key, ``Authorization: Bearer …``).
    :param form: the body: ``"centrifugo"`` (``{"channel", "data"}``) or ``"relay"`` (relay's
        ``{"event", "data"}``).
    :param status: the status of an accepted publish (Centrifugo 200, relay 202).
    """

    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    form: str = "centrifugo"
    status: int = 200


class _HTTPAPIPublisher:
    """Publishes through a server HTTP API (Centrifugo's ``POST /api/publish`` with its API key,
    relay's ``POST /events/<channel>`` with a token).

    Open loop, like ``PUBLISH`` to Redis: requests are pipelined on one keep-alive connection at
    the paced times and a thread reads the answers, so a server that answers late makes its
    deliveries late (measured) instead of slowing the publisher down (hidden). One connection
    keeps the order: an HTTP/1.1 server (Go's, gunicorn's) handles a connection's requests one
    after another."""

    def __init__(self, target: HTTPTarget):
        import threading

        self.target = target
        self.sock = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        extra = "".join(f"{k}: {v}\r\n" for k, v in target.headers)
        self.head = (f"POST {target.path} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n{extra}"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.ok = str(target.status).encode()
        self.sent = self.answered = 0
        self.error: str | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def publish(self, channel: str, data: str) -> None:
        if self.error:
            raise RuntimeError(self.error)
        if self.target.form == "relay":
            body = f'{{"event":"bench","data":{data}}}'.encode()
        else:
            body = f'{{"channel":{json.dumps(channel)},"data":{data}}}'.encode()
        self.sock.sendall(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.sent += 1

    def _read(self) -> None:
        f = self.sock.makefile("rb")
        try:
            while True:
                status = f.readline()
                if not status:
                    return
                length = None
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length is None:
                    self.error = f"answer without Content-Length: {status!r}"
                    return
                body = f.read(length)
                if status.split()[1:2] != [self.ok] or b'"error"' in body:
                    self.error = f"publish failed: {status.strip()!r} {body[:300]!r}"
                    return
                self.answered += 1
        except (OSError, ValueError) as exc:
            if self.answered < self.sent and not self.error:
                self.error = f"reading answers: {exc!r}"

    def finish(self, timeout: float = 15.0) -> int:
        """Wait (at most ``timeout``) until every request is answered; raise the first failure.
        Returns how many are still unanswered: an overloaded server's, whose deliveries then
        count as late or lost like any other system's."""
        deadline = time.monotonic() + timeout
        while self.answered < self.sent and not self.error and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.error:
            raise RuntimeError(self.error)
        return self.sent - self.answered

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _publisher(pipe, redis_port: int, channel: str, system: str, lo: int, count: int, rate: float,
               cpus=None, http_api: HTTPTarget | None = None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        if http_api:
            client = _HTTPAPIPublisher(http_api)
        else:
            import redis

            client = redis.Redis(host="127.0.0.1", port=redis_port, client_name="bench-publisher")
            client.ping()
    except Exception as exc:  # noqa: BLE001 - tell the coordinator instead of dying silently
        pipe.send(("error", repr(exc)))
        return
    pipe.send(("ready",))
    pipe.recv()  # go
    interval = 1.0 / rate
    started = time.perf_counter()
    behind = 0.0
    for i in range(count):
        due = started + i * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        try:
            client.publish(channel, bare_data(lo + i, time.time()) if http_api else payload(system, lo + i, time.time()))
        except Exception as exc:  # noqa: BLE001
            pipe.send(("error", f"message {i} of {count}: {exc!r}"))
            client.close()
            return
    elapsed = time.perf_counter() - started
    extra = {}
    if http_api:
        try:
            unanswered = client.finish()
        except RuntimeError as exc:
            pipe.send(("error", str(exc)))
            client.close()
            return
        # How long after the last request the server's answers kept coming: its own backlog.
        extra = {"api_answers_after_s": round(time.perf_counter() - started - elapsed, 3),
                 "api_unanswered": unanswered}
    pipe.send(("done", elapsed, behind, extra))
    client.close()


class Publisher:
    """Publishes ``count`` messages at ``rate`` per second from its own process."""

    def __init__(self, redis_port: int, channel: str, system: str, lo: int, count: int, rate: float, cpus=None,
                 http_api: HTTPTarget | None = None):
        """``http_api``: publish over HTTP (Centrifugo's server API, relay's publish endpoint) instead of Redis."""
        ctx = multiprocessing.get_context("fork")
        self.pipe, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_publisher,
                                args=(theirs, redis_port, channel, system, lo, count, rate, cpus, http_api),
                                daemon=True)
        self.proc.start()
        if not self.pipe.poll(10):
            raise TimeoutError("publisher did not start")
        answer = self.pipe.recv()
        if answer[0] == "error":
            self.proc.join(5)
            raise RuntimeError(f"publisher could not start: {answer[1]}")
        self.started_at = 0.0
        self.extra: dict = {}  # HTTP API publishing: api_answers_after_s, api_unanswered

    def go(self) -> None:
        self.started_at = time.time()
        self.pipe.send(("go",))

    def wait(self, timeout: float) -> tuple[float, float]:
        """(seconds publishing took, worst lag behind schedule)."""
        try:
            if not self.pipe.poll(timeout):
                raise TimeoutError("publisher did not finish in time")
            answer = self.pipe.recv()
            if answer[0] == "error":
                raise RuntimeError(f"publisher failed: {answer[1]}")
            _, elapsed, behind, self.extra = answer
            return elapsed, behind
        finally:
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]

