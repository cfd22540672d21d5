"""Publish events to a relay from Python, over ``POST /events/<channel>``.

::

    from relay.client import RelayClient

    client = RelayClient("http://127.0.0.1:8000", token=os.environ.get("RELAY_TOKEN"))
    published = client.publish("demo", "emote", {"emote": "dolphin"})
    published.id        # the SSE id browsers see ("mwxp52c9-1")

    import relay.client
    relay.client.publish("demo", "emote", {"emote": "dolphin"})   # RELAY_URL, RELAY_TOKEN

The standard library only (``http.client``): no gevent, no Flask, and importing it does not
import the relay app. Under gevent's monkey-patching it is cooperative like any socket code.
Inside a Flask app use :mod:`relay.flask`.

Retries. An answer that says nothing was published is retried, up to ``retries`` more times:
``503`` (the backbone is unavailable) and ``429`` (rate limited), after the answer's
``Retry-After`` (or an exponential backoff without one). A ``Retry-After`` longer than
``max_retry_after`` is not waited for: the error is raised at once, with ``retry_after`` set,
so a web request never hangs for minutes. A connection that could not be opened is retried too
(nothing was sent: a relay restarting). A connection that fails *after* the request was sent
(a timeout waiting for the answer, a reset) is not retried, because relay may have published the
event and a retry would publish it twice; its :class:`ConnectionFailed` has
``maybe_published = True``.

Errors. Every error answer raises a :class:`RelayError` with ``status``, ``error`` and
``message`` from relay's JSON answer: :class:`Unauthorized` (401), :class:`Forbidden` (403),
:class:`PublishRejected` (400, 413, 415, 422: the request itself is wrong; retrying it cannot
help), :class:`RateLimited` (429) and :class:`Unavailable` (503) once retries are spent,
:class:`ConnectionFailed` (no answer), and :class:`RelayError` itself for any other status.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_URL",
    "ConnectionFailed",
    "Forbidden",
    "PublishRejected",
    "Published",
    "RateLimited",
    "RelayClient",
    "RelayError",
    "Unauthorized",
    "Unavailable",
    "publish",
]

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})  # relay answers these before publishing anything
BACKOFF = 0.5  # seconds before the first retry when the answer has no Retry-After; doubles each time


class RelayError(Exception):
    """relay answered with an error, or could not be reached.

    ``status`` is the HTTP status (None when there was no answer), ``error`` relay's error code
    (``"invalid_event"``, ``"unauthorized"``, …), ``message`` its explanation (naming the field),
    ``retry_after`` the seconds the answer asked to wait (or None), ``attempts`` how many
    requests were made.
    """

    def __init__(self, status: int | None, error: str, message: str, retry_after: float | None = None,
                 attempts: int = 1):
        self.status, self.error, self.message = status, error, message
        self.retry_after, self.attempts = retry_after, attempts
        super().__init__(f"{status} {error}: {message}" if status is not None else f"{error}: {message}")


class Unauthorized(RelayError):
    """401: the token is missing, malformed, expired or wrongly signed."""


class Forbidden(RelayError):
    """403: the token does not allow publishing on this channel."""


class PublishRejected(RelayError):
    """400, 413, 415 or 422: the event or the request is invalid (the message names the field)."""


class RateLimited(RelayError):
    """429: over ``publish.rate``, still after the retries (``retry_after`` says how long to wait)."""


class Unavailable(RelayError):
    """503: relay could not publish (its backbone is down), still after the retries."""


class ConnectionFailed(RelayError):
    """No answer: the connection could not be opened, or broke or timed out before the answer.

    ``maybe_published`` is True when the request had been sent: relay may have published it.
    """

    def __init__(self, message: str, maybe_published: bool, attempts: int = 1):
        self.maybe_published = maybe_published
        super().__init__(None, "connection_failed", message, attempts=attempts)


_ERRORS: dict[int, type[RelayError]] = {401: Unauthorized, 403: Forbidden, 400: PublishRejected,
                                        413: PublishRejected, 415: PublishRejected, 422: PublishRejected,
                                        429: RateLimited, 503: Unavailable}


@dataclass(frozen=True)
class Published:
    """A published event: its ``id`` (the SSE ``id:`` field) and ``channel``.

    ``dropped`` is True when a plugin dropped the event (``id`` is then None).
    """

    id: str | None
    channel: str
    dropped: bool = False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Text that UTF-8 cannot carry (a lone surrogate) is sent escaped, so
    relay answers 422 naming the field instead of this side failing without a word."""
    try:
        return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, allow_nan=False, separators=(",", ":")).encode("ascii")


class RelayClient:
    """Publishes to the relay at ``url`` (``http://host:port``, or with a path prefix behind a proxy).

    :param token: a JWT sent as ``Authorization: Bearer``; needed when the relay has ``[auth]``.
    :param timeout: seconds for connecting and for the answer, per attempt.
    :param retries: further attempts after a 503, a 429 or a connection that could not be opened.
    :param max_retry_after: the longest ``Retry-After`` waited for; longer ones raise at once.

    One connection per publish (a relay's keep-alive connection may be closed at any moment,
    which would leave a retry unsure whether the event went out). Safe to share between threads.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 5.0, retries: int = 3,
                 max_retry_after: float = 5.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http://host:port or https://host, got {url!r}")
        if retries < 0 or timeout <= 0 or max_retry_after < 0:
            raise ValueError("timeout must be > 0, retries and max_retry_after >= 0")
        self.url, self.token, self.timeout = url.rstrip("/"), token or None, timeout
        self.retries, self.max_retry_after = retries, max_retry_after
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")

    def __repr__(self) -> str:  # never shows the token
        return f"RelayClient({self.url!r}, token={'***' if self.token else None})"

    def publish(self, channel: str, event: str, data: Any = None, id: str | None = None) -> Published:
        """Publish ``event`` with ``data`` (any JSON value) on ``channel``; returns its id.

        ``id`` is an optional id of your choosing (unique per channel; see the README's Event ids).
        Raises a :class:`RelayError` subclass for every error answer (see the module's doc).
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel: must be a non-empty string, got {channel!r}")
        message: dict[str, Any] = {"event": event, "data": data}
        if id is not None:
            message["id"] = id
        body = _encode(message)
        path = f"{self._prefix}/events/{urllib.parse.quote(channel, safe='')}"
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close",
                   "User-Agent": "relay-client/1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            attempt += 1
            try:
                status, answer_headers, raw = self._send(path, body, headers)
            except ConnectionFailed as exc:
                exc.attempts = attempt
                if exc.maybe_published or attempt > self.retries:
                    raise
                time.sleep(BACKOFF * 2 ** (attempt - 1))
                continue
            if status == 202:
                answer = _json(raw)
                answer = answer if isinstance(answer, dict) else {}
                return Published(answer.get("id"), answer.get("channel", channel), bool(answer.get("dropped")))
            error = self._error(status, answer_headers, raw, attempt)
            if status not in RETRY_STATUSES or attempt > self.retries:
                raise error
            wait = error.retry_after if error.retry_after is not None else BACKOFF * 2 ** (attempt - 1)
            if wait > self.max_retry_after:
                raise error  # do not hold the caller for longer than it allowed
            time.sleep(wait)

    def _send(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One attempt on a fresh connection; :class:`ConnectionFailed` when there is no answer."""
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.timeout)
        where = f"{self._scheme}://{self._host}" + (f":{self._port}" if self._port else "")
        try:
            try:
                connection.connect()
            except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, DNS, TLS
                raise ConnectionFailed(f"cannot connect to {where}: {exc}", maybe_published=False) from exc
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                return response.status, response.headers, response.read()
            except TimeoutError as exc:
                raise ConnectionFailed(f"no answer from {where} within {self.timeout:g}s; the event may have "
                                       "been published", maybe_published=True) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionFailed(f"the connection to {where} failed before the answer ({exc}); the event "
                                       "may have been published", maybe_published=True) from exc
        finally:
            connection.close()

    @staticmethod
    def _error(status: int, headers: http.client.HTTPMessage, raw: bytes, attempts: int) -> RelayError:
        answer = _json(raw)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            error, message = answer["error"], str(answer.get("message", ""))
        else:  # not relay's answer: a proxy's error page, or a URL that is not a relay
            error, message = f"http_{status}", raw[:200].decode("utf-8", "replace").strip() or "(no body)"
        kind = _ERRORS.get(status, RelayError)
        return kind(status, error, message, parse_retry_after(headers.get("Retry-After")), attempts)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def publish(channel: str, event: str, data: Any = None, id: str | None = None, *, url: str | None = None,
            token: str | None = None, timeout: float = 5.0, retries: int = 3) -> Published:
    """Publish once without keeping a client: ``url`` defaults to ``RELAY_URL`` (else
    ``http://127.0.0.1:8000``) and ``token`` to ``RELAY_TOKEN``, as ``relay publish`` does."""
    client = RelayClient(url or os.environ.get("RELAY_URL") or DEFAULT_URL,
                         token if token is not None else os.environ.get("RELAY_TOKEN"), timeout, retries)
    return client.publish(channel, event, data, id)
