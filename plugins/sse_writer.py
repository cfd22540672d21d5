"""Direct writes: an SSE stream's events go from the hub straight to the client's OS socket.

The usual path for one event costs, per client: a hub callback to wake the stream's greenlet, a
switch into it, its heartbeat timer re-armed, the generator resumed, gunicorn's chunked
``Response.write`` and gevent's ``sendall`` (which asks the kernel for ``SO_SNDBUF`` before every
send), and a switch back (docs/performance.md, "What limits scale"). Here, while a stream's
greenlet is parked waiting for events, the bus's offers only mark the client; once per loop
iteration :meth:`DirectWriter.flush` writes each marked client's queued frames with one
non-blocking ``send`` on the OS socket, framed as the HTTP chunk gunicorn would have made. Events
that arrive in the same iteration go out in one write, and clients that got the same events share
one framed buffer.

One owner of the socket at any moment: the flush writes only to a client whose stream is parked
in :meth:`plugins.sse.Client.wait` (``Client.direct``), which is never in the middle of a write of
its own, since gunicorn writes what the generator yields before resuming it. When the kernel takes
less than the whole buffer (``EAGAIN``, a partial send), the rest becomes ``Client.unsent``,
``direct`` is cleared and the stream's greenlet is woken: it writes the rest, then anything queued
since, the usual (blocking, cooperative) way, so bytes never interleave and frames keep their
order. The slow-client policy is unchanged: while the greenlet waits for a client that does not
read, events queue up to ``queue_size``, then the client is closed as ``slow``.

Direct writes are used only when gunicorn's plain HTTP/1.x response owns the connection
(:func:`direct_socket`); elsewhere (Flask's test client, other WSGI servers, TLS, HTTP/2) every
event takes the usual path.
"""

from __future__ import annotations

import socket
import time

from gevent.hub import get_hub

try:  # the socket class gevent gives gunicorn's worker; TLS sockets are subclasses, refused below
    from gevent.socket import socket as GeventSocket
except ImportError:  # pragma: no cover - gevent is a dependency of relay
    GeventSocket = None


def direct_socket(server_response, sock) -> tuple[socket.socket, bool] | None:
    """The OS socket to write a stream's frames to, and whether to frame them as HTTP chunks;
    ``None`` when its events must take the usual path.

    Call it once the response headers are out (after the generator's first ``yield``).
    ``server_response`` is the object whose ``start_response`` the app was called with; only
    gunicorn's own HTTP/1.x ``Response`` qualifies (not its HTTP/2 subclass, which multiplexes
    streams on the socket), writing to a plain gevent socket (not TLS), with no
    ``Content-Length``. gunicorn frames the body as chunks exactly when the request is HTTP/1.1
    (``Response.chunked``; it decides in ``start_response``), else sends it as it is and closes
    the connection at its end: either way the frames written here are whole units of that body,
    and the terminal chunk gunicorn writes when the generator returns follows them.
    """
    kind = type(server_response)
    if kind.__name__ != "Response" or kind.__module__ != "gunicorn.http.wsgi":
        return None
    if GeventSocket is None or type(sock) is not GeventSocket or getattr(server_response, "sock", None) is not sock:
        return None
    if not getattr(server_response, "headers_sent", False) or getattr(server_response, "response_length", 0) is not None:
        return None
    if getattr(server_response, "upgrade", False) or getattr(server_response, "_omits_body", False):
        return None
    raw = getattr(sock, "_sock", None)  # the OS socket under gevent's wrapper, non-blocking
    if raw is None:
        return None
    return raw, server_response.chunked is True


class DirectWriter:
    """Writes the queued frames of marked clients once per loop iteration (see the module).

    :param frames: ``frames(events, batch)``, the bytes of a client's queued events (the hub's,
        which skips events whose frame cannot be built); ``batch`` is the bus's batch when the
        queue holds exactly it.
    :param sampler: the hub's :class:`plugins.sse_latency.LatencySampler`.
    """

    def __init__(self, frames, sampler):
        self._frames = frames
        self._sampler = sampler
        self._loop = get_hub().loop
        self._marked: list = []
        self._scheduled = False
        # The last queue framed, its bytes, and its HTTP chunk: the clients of a channel are
        # offered the same events, so one flush frames them once (a list compares its items by
        # identity first, so checking costs little).
        self._last: tuple[list | None, bytes, bytes] = (None, b"", b"")
        self.writes = 0  # frames buffers written directly
        self.handed_over = 0  # writes the kernel did not take whole: finished by the stream's greenlet

    def mark(self, client) -> None:
        """``client`` has queued events while direct: write them at the end of this iteration."""
        self._marked.append(client)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self.flush)

    def flush(self) -> None:
        """Write each marked client's queue in one ``send`` (a hub callback)."""
        self._scheduled = False
        clients, self._marked = self._marked, []
        now = time.time()
        written = 0
        sampler = self._sampler
        countdown = sampler.countdown  # a local: one decrement per write
        for client in clients:
            if not client.direct:
                continue  # its stream woke meanwhile (closed, heartbeat): it writes the queue itself
            events = client.pending
            if not events:
                continue  # marked twice in one iteration: taken already
            client.pending = []
            batch, client.batch = client.batch, None
            last = self._last
            if events == last[0]:
                data, chunk = last[1], last[2]
            else:
                data = self._frames(events, batch)
                chunk = b"%X\r\n%b\r\n" % (len(data), data) if data else b""
                self._last = (events, data, chunk)
            if not data:
                continue  # every event was skipped as unframeable
            client.server_response.sent += len(data)  # gunicorn's count of body bytes (its access log)
            if client.chunked:
                data = chunk
            try:
                sent = client.raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                client.close("left")  # reset, broken pipe: the client is gone
                continue
            written += 1
            client.written_at = now
            countdown -= 1
            if countdown <= 0:
                countdown = sampler.sample(events[0], now)
            if sent < len(data):
                # The kernel's buffer is full: the stream's greenlet finishes this write and
                # takes over the queue until the client has caught up.
                client.unsent = data[sent:]
                client.direct = False
                client.wake()
                self.handed_over += 1
        self.writes += written
        sampler.countdown = countdown
        self._last = (None, b"", b"")  # hold no events past the iteration
