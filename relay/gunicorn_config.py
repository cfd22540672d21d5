"""gunicorn settings and server hooks for relay (see gunicorn.conf.py).

Environment: ``RELAY_BIND`` (default ``127.0.0.1:8000``), ``RELAY_WORKERS`` (default 1),
``RELAY_WORKER_CONNECTIONS`` (default 10100: 10000 streams and ``sinks.sse.reserved_connections``),
``RELAY_GRACEFUL_TIMEOUT`` (default 10). Logs: relay's ``log_format``, ``log_level`` and
``access_log`` apply to gunicorn's own lines too (relay.gunicorn_logging).
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile

from relay.logs import early_setting

bind = os.environ.get("RELAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RELAY_WORKERS", "1"))
worker_class = "gevent"
worker_connections = int(os.environ.get("RELAY_WORKER_CONNECTIONS", "10100"))
# SSE responses live for hours: the arbiter's timeout watches the worker's heartbeat, not
# requests, so it stays short; keep-alive and graceful shutdown suit long-lived streams.
timeout = 30
keepalive = 75
graceful_timeout = int(os.environ.get("RELAY_GRACEFUL_TIMEOUT", "10"))
# gunicorn's lines in relay's format (JSON with log_format = "json") and relay's access log.
logger_class = "relay.gunicorn_logging.GunicornLogger"
loglevel = early_setting("log_level")  # gunicorn's --log-level still wins


def on_starting(server):
    """Check the configuration before any worker starts, so a bad key stops start-up with its name."""
    os.environ["RELAY_BIND"] = ",".join(server.cfg.bind)  # what relay checks, e.g. for open publishing
    os.environ["RELAY_WORKERS"] = str(server.cfg.workers)  # the memory backbone serves only one
    # The stream limit keeps some of these free for /healthz and publishing (sinks.sse.reserved_connections).
    os.environ["RELAY_WORKER_CONNECTIONS"] = str(server.cfg.worker_connections)
    # In a child process: the arbiter must not import the app (and with it ssl, redis, kafka)
    # before the workers fork and gevent monkey-patches them.
    if not _check_config(server):
        sys.exit(1)
    _prepare_metrics_directory()
    _raise_open_file_limit()


def _check_config(server) -> bool:
    """``relay check-config`` in a child process; its output in the log's format."""
    argv = [sys.executable, "-m", "relay", "check-config", "--quiet"]
    if getattr(server.log, "log_format", "plain") != "json":
        return subprocess.run(argv, timeout=120, check=False).returncode == 0
    # Under log_format = "json" its plain-text complaints would break the JSON stream: pass its
    # JSON lines (relay's log) through, and log the rest as one record.
    check = subprocess.run(argv, timeout=120, capture_output=True, text=True, errors="replace", check=False)
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


def _raise_open_file_limit():
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
