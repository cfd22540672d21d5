"""gunicorn's logger for relay (``logger_class`` in relay.gunicorn_config).

* gunicorn's own lines ("Listening at", "Booting worker", "Handling signal", "Worker exiting")
  get relay's ``log_format``, so with ``json`` every line the process writes is JSON; so does the
  root logger (libraries' warnings) and Python's warnings.
* The access log (``access_log``: ``off``, ``json`` or ``combined``; off by default): one line
  per request on standard output, written when the response ends, so a Server-Sent-Events
  stream is logged once, when it closes, with its whole duration and byte count. The value of
  an ``access_token`` query parameter is replaced by ``REDACTED``.

gunicorn's own ``--log-config``/``--log-config-dict``/``--log-config-json``, when given, replace
this formatting (the access lines are still written when ``access_log`` is on). Both settings are
read from ``RELAY_LOG_FORMAT``/``RELAY_ACCESS_LOG`` or the ``RELAY_CONFIG``
file when the arbiter starts and at each reload (``kill -HUP``).
"""

from __future__ import annotations

import logging
import sys

from gunicorn import glogging

from relay.logs import JSONFormatter, access_fields, combined_line, early_setting, formatter


class GunicornLogger(glogging.Logger):
    """gunicorn's ``Logger`` with relay's line format and relay's access log."""

    def setup(self, cfg):
        # Read before super().setup(), which asks _compute_access_log_enabled().
        self.log_format = early_setting("log_format")
        self.access_format = early_setting("access_log")
        if self.access_format == "off" and cfg.accesslog:
            self.access_format = "combined"  # gunicorn's own --access-logfile asks for one
        super().setup(cfg)
        if cfg.logconfig_dict or cfg.logconfig_json or cfg.logconfig:
            return  # the operator configured logging themselves (--log-config*): theirs stands
        line_format = formatter(self.log_format)
        for handler in self.error_log.handlers:
            handler.setFormatter(line_format)
        self._setup_access_handler()
        self._setup_root_handler(line_format)

    def _setup_access_handler(self) -> None:
        if self.access_format == "off":
            return
        if not self.access_log.handlers:  # no --access-logfile of gunicorn's own: standard output
            handler = logging.StreamHandler(sys.stdout)
            handler._gunicorn = True  # so gunicorn's setup() drops it at a reload, like its own
            self.access_log.addHandler(handler)
        # Under log_format = "json" every line is JSON: a combined line becomes its "message".
        # Otherwise a combined line is written as it is, and a json one as a JSON object.
        if self.log_format == "json" or self.access_format == "json":
            access_format = JSONFormatter()
        else:
            access_format = logging.Formatter("%(message)s")
        for handler in self.access_log.handlers:
            handler.setFormatter(access_format)

    def _setup_root_handler(self, line_format: logging.Formatter) -> None:
        # Libraries log to the root logger; without a handler Python prints bare messages on
        # standard error (its "last resort"), which would break a JSON log stream.
        root = logging.getLogger()
        handler = next((h for h in root.handlers if getattr(h, "relay_root_handler", False)), None)
        if handler is None:
            handler = logging.StreamHandler()
            handler.relay_root_handler = True
            root.addHandler(handler)
        handler.setFormatter(line_format)
        logging.captureWarnings(True)  # warnings.warn() through the same handler

    def _compute_access_log_enabled(self) -> bool:
        return getattr(self, "access_format", "off") != "off"

    def access(self, resp, req, environ, request_time):
        """One line per request, once its response has ended (gunicorn calls this then)."""
        if self.access_format == "off":
            return
        try:
            seconds = request_time.total_seconds()
            fields = access_fields(environ, getattr(resp, "status", "-"), getattr(resp, "sent", None), seconds)
            if self.access_format == "json":
                self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                                     extra={"fields": fields})
            else:
                self.access_log.info("%s", combined_line(fields))
        except Exception:  # noqa: BLE001 - a log line must never break a response
            self.exception("could not write the access log line")
