"""Log lines: relay's two formats (plain text, or one JSON object per line) and the access log.

Used by the app (relay's own ``relay.*`` loggers) and by :mod:`relay.gunicorn_logging` (gunicorn's
lines, the access log), so every line the process writes has the same format. Standard library
only: gunicorn's arbiter imports this before the workers fork and gevent patches anything.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import unquote

__all__ = ["PLAIN_FORMAT", "JSONFormatter", "access_fields", "combined_line", "configure_relay_logger",
           "early_setting", "formatter", "log_refused_body", "redact_query"]

PLAIN_FORMAT = "%(asctime)s [worker %(process)d] %(levelname)s %(name)s: %(message)s"
REDACTED = "REDACTED"
SECRET_PARAMETERS = ("access_token",)  # query parameters whose values never reach a log


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, worker (pid), message, and the
    record's ``fields`` (``log.info(..., extra={"fields": {...}})``) for structured details."""

    converter = time.gmtime  # the "Z" below promises UTC
    _OWN = ("time", "level", "logger", "worker", "message", "exception")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "worker": record.process,
            "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update((key, value) for key, value in fields.items() if key not in self._OWN)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # default=str: a field a caller filled with an odd object must not lose the line.
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``log_format`` (``"plain"`` or ``"json"``)."""
    return JSONFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT)


def configure_relay_logger(log_format: str, log_level: str) -> None:
    """Give the ``relay`` logger its one handler (standard error) in ``log_format``.

    Idempotent: building the app twice in a process replaces the formatter, never adds a handler.
    """
    logger = logging.getLogger("relay")
    logger.setLevel(log_level.upper())
    handler = next((h for h in logger.handlers if getattr(h, "relay_handler", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.relay_handler = True
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(formatter(log_format))


def early_setting(name: str) -> Any:
    """A core setting (``log_format``, ``access_log``, ``log_level``) read before the app exists.

    gunicorn's arbiter needs the log format before any worker starts, and must not build the app
    (see relay.gunicorn_config). Read the same way as the app reads it (``RELAY_*`` variable over
    the ``RELAY_CONFIG`` file over the default) and checked against the same schema choices; a bad
    value gives the default here, and ``relay check-config`` then stops start-up naming the key.
    """
    from relay.config import CORE_SECTIONS, ConfigError, raw_config

    option = next(section for section in CORE_SECTIONS if section.path == "").option(name)
    value = os.environ.get(option.env) if option.env else None
    if value is None:
        try:
            value = raw_config(None)[0].get(name, option.default)
        except ConfigError:
            return option.default
    if option.choices is not None and value not in option.choices:
        return option.default
    return value


def redact_query(query: str) -> str:
    """``query`` as received, with the value of every secret parameter (``access_token``) replaced."""
    if not query:
        return ""
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if unquote(name.replace("+", " ")) in SECRET_PARAMETERS:
            part = f"{name}={REDACTED}" if equals else name
        parts.append(part)
    return "&".join(parts)


def access_fields(environ: dict, status: int | str, sent: int | None, seconds: float) -> dict[str, Any]:
    """What one access-log line tells: method, path (as sent), query (secrets redacted), status,
    duration in seconds, the client's address, body bytes sent, referer and user agent."""
    raw_uri = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    path, _, query = raw_uri.partition("?")
    try:
        status = int(str(status).split(None, 1)[0])
    except (ValueError, IndexError):
        pass  # left as the server gave it
    fields: dict[str, Any] = {
        "method": environ.get("REQUEST_METHOD", "-"), "path": path, "query": redact_query(query),
        "status": status, "duration": round(seconds, 6), "remote_addr": environ.get("REMOTE_ADDR") or "-",
        "bytes": sent if sent is not None else 0, "protocol": environ.get("SERVER_PROTOCOL", "-"),
        "referer": environ.get("HTTP_REFERER", ""), "user_agent": environ.get("HTTP_USER_AGENT", "")}
    return fields


def _quoted(text: str) -> str:
    # Inside the quotes of a combined line: escape what would end or break the field (as nginx does).
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def combined_line(fields: dict[str, Any], when: float | None = None) -> str:
    """The Apache/nginx "combined" format, then the duration in seconds:
    ``127.0.0.1 - - [01/Dec/2026:11:07:53 +0000] "GET /events/demo HTTP/1.1" 200 512 "-" "curl/8" 3.012``."""
    target = fields["path"] + (f"?{fields['query']}" if fields["query"] else "")
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(when))
    request_line = f"{fields['method']} {target} {fields['protocol']}"
    return (f"{fields['remote_addr']} - - [{stamp}] \"{_quoted(request_line)}\" {fields['status']} "
            f"{fields['bytes']} \"{_quoted(fields['referer'] or '-')}\" \"{_quoted(fields['user_agent'] or '-')}\" "
            f"{fields['duration']:.3f}")



def log_refused_body(request, status: int, error: str, message: str) -> None:
    """Log, at INFO, a request refused for its body (408 too slow, 413 too large), never the body."""
    address = request.remote_addr or "-"
    logging.getLogger("relay.http").info(
        "request refused: %d %s on %s %s from %s: %s", status, error, request.method, request.path[:300], address,
        message, extra={"fields": {"status": status, "error": error, "method": request.method,
                                   "path": request.path[:300], "client": address, "detail": message}})
