"""gunicorn settings and server hooks for relay (see gunicorn.conf.py).

The server settings are relay's ``[server]`` section (docs/configuration.md): ``bind``
(``RELAY_BIND``, default ``127.0.0.1:8000``), ``workers`` (``RELAY_WORKERS``, 1),
``worker_connections`` (``RELAY_WORKER_CONNECTIONS``, 10100: 10000 streams and
``sinks.sse.reserved_connections``), ``graceful_timeout`` (``RELAY_GRACEFUL_TIMEOUT``, 10), read
from the ``RELAY_CONFIG`` file and the environment by relay's own loader and validated: a bad value
stops start-up naming the key. gunicorn's command line (``-b``, ``-w``...) still wins, and the
app sees what gunicorn actually uses (post_fork). Logs: relay's ``log_format``, ``log_level`` and
``access_log`` apply to gunicorn's own lines too (relay.gunicorn_logging).
"""

import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile

# Both light: the arbiter must not import gevent, ssl or prometheus_client before the workers fork.
from relay.config import SERVER_SECTION, ConfigError, server_settings
from relay.logs import configure_relay_logger, early_setting


def _read_server_settings() -> dict:
    try:
        return server_settings()
    except ConfigError as exc:
        # No traceback from gunicorn's config loader: the message names each bad key, in the log's format.
        configure_relay_logger(early_setting("log_format"), "info")
        logging.getLogger("relay").error("%s", exc)
        sys.exit(1)


_server = _read_server_settings()
bind = _server["bind"]
workers = _server["workers"]
worker_class = "gevent"
worker_connections = _server["worker_connections"]
# SSE responses live for hours: the arbiter's timeout watches the worker's heartbeat, not
# requests, so it stays short; keep-alive and graceful shutdown suit long-lived streams.
timeout = 30
keepalive = 75
graceful_timeout = _server["graceful_timeout"]
# gunicorn's lines in relay's format (JSON with log_format = "json") and relay's access log.
logger_class = "relay.gunicorn_logging.GunicornLogger"
loglevel = early_setting("log_level")  # gunicorn's --log-level still wins


def served_settings(cfg=None) -> dict | None:
    """The ``[server]`` values gunicorn runs with (``cfg``: its config), for ``create_app(server=...)``.

    Without ``cfg``: those handed to this worker by post_fork, or ``None`` before (not a worker).
    """
    if cfg is None:
        return _served
    return {option.name: getattr(cfg, option.name) for option in SERVER_SECTION.options}


# How the app learns what gunicorn actually uses (its -b, -w... win over RELAY_BIND and the file):
# post_fork runs in each new worker before it imports relay.wsgi_app, and keeps gunicorn's values
# in this module, where relay.wsgi_app finds them and passes them to create_app(server=...). Plain
# module state of the worker process: no environment variable is written, none is read back.
_served: dict | None = None


def post_fork(server, worker):
    """In the new worker, before the app is built: hand gunicorn's settings to relay.wsgi_app."""
    global _served
    _served = served_settings(worker.cfg)


def on_starting(server):
    """Check the configuration before any worker starts, so a bad key stops start-up with its name."""
    # In a child process: the arbiter must not import the app (and with it ssl, redis, kafka)
    # before the workers fork and gevent monkey-patches them.
    if not _check_config(server):
        sys.exit(1)
    _prepare_metrics_directory()
    _raise_open_file_limit(server.cfg.worker_connections)


def _check_config(server) -> bool:
    """``relay check-config`` in a child process; its output in the log's format."""
    argv = [sys.executable, "-m", "relay", "check-config", "--quiet"]
    # The child checks the app with the server settings gunicorn actually uses (its command line
    # wins): given in the child's own environment, which it reads as RELAY_* overrides; this
    # process's os.environ is left as it is.
    served = served_settings(server.cfg)
    env = {**os.environ, **{option.env: _env_text(served[option.name]) for option in SERVER_SECTION.options}}
    if getattr(server.log, "log_format", "plain") != "json":
        return subprocess.run(argv, timeout=120, check=False, env=env).returncode == 0
    # Under log_format = "json" its plain-text complaints would break the JSON stream: pass its
    # JSON lines (relay's log) through, and log the rest as one record.
    check = subprocess.run(argv, timeout=120, capture_output=True, text=True, errors="replace", check=False,
                           env=env)
    text = []
    for line in (check.stdout + check.stderr).splitlines():
        if line.startswith("{") and line.endswith("}"):
            sys.stderr.write(line + "\n")
        elif line.strip():
            text.append(line)
    if text:
        (server.log.error if check.returncode else server.log.info)("%s", "\n".join(text))
    sys.stderr.flush()
    return check.returncode == 0


def _env_text(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def _prepare_metrics_directory():
    # prometheus-client's multiprocess mode: every worker writes its figures here and /metrics
    # adds them up. It must be set before prometheus_client is imported, and start empty.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="relay-metrics-")
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(path).startswith("relay-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


def _raise_open_file_limit(worker_connections: int):
    # Every SSE client is a file descriptor; the soft limit is often 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, worker_connections + 1024)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def post_worker_init(worker):
    """Start the relay's sources in the worker, after fork, and stop them when it stops."""
    import gc

    import gevent

    relay = worker.wsgi.extensions["relay"]
    _log_greenlet_errors(worker)
    relay.start()
    # What exists now (modules, the app, its plugins) lives as long as the worker: move it out of
    # the cyclic collector's reach. Otherwise every full collection walks it all while every
    # stream waits: 25-40 ms pauses at 1000 clients, ~8 ms once frozen (docs/performance.md).
    gc.freeze()

    def stop_when_worker_stops():
        # gunicorn's SIGTERM handler only clears ``alive``; streams never end by themselves,
        # so end them (with a retry hint) as soon as it does, then the worker drains quickly.
        while worker.alive:
            gevent.sleep(0.2)
        relay.stop()

    gevent.spawn(stop_when_worker_stops)


def _log_greenlet_errors(worker):
    # gevent prints a greenlet's uncaught exception as a bare traceback on standard error; under
    # log_format = "json" that would break the JSON stream, so it goes through the log instead.
    if getattr(worker.log, "log_format", "plain") != "json":
        return
    import logging

    import gevent

    log = logging.getLogger("relay.gevent")

    def print_exception(context, kind, value, tb):
        log.error("%s failed with %s", context, getattr(kind, "__name__", "exception"),
                  exc_info=(kind, value, tb) if kind is not None else None)

    gevent.get_hub().print_exception = print_exception


def worker_exit(server, worker):
    relay = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("relay")
    if relay is not None:
        relay.stop()

# gunicorn 27 opens a control socket in $HOME by default; several relays on one host (and the
# test suite) would fight over it.
control_socket_disable = True
