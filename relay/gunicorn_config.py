"""gunicorn settings and server hooks for relay (see gunicorn.conf.py).

Environment: ``RELAY_BIND`` (default ``127.0.0.1:8000``), ``RELAY_WORKERS`` (default 1),
``RELAY_WORKER_CONNECTIONS`` (default 10000), ``RELAY_GRACEFUL_TIMEOUT`` (default 10).
"""

import os
import resource
import sys

bind = os.environ.get("RELAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RELAY_WORKERS", "1"))
worker_class = "gevent"
worker_connections = int(os.environ.get("RELAY_WORKER_CONNECTIONS", "10000"))
# SSE responses live for hours: the arbiter's timeout watches the worker's heartbeat, not
# requests, so it stays short; keep-alive and graceful shutdown suit long-lived streams.
timeout = 30
keepalive = 75
graceful_timeout = int(os.environ.get("RELAY_GRACEFUL_TIMEOUT", "10"))


def on_starting(server):
    """Check the configuration once in the arbiter, so a bad key stops start-up with its name."""
    from relay.cli import check_config

    if not check_config(quiet=True):
        sys.exit(1)
    _raise_open_file_limit()


def _raise_open_file_limit():
    # Every SSE client is a file descriptor; the soft limit is often 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, worker_connections + 1024)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def post_worker_init(worker):
    """Start the relay's sources in the worker, after fork, and stop them when it stops."""
    import gevent

    relay = worker.wsgi.extensions["relay"]
    relay.start()

    def stop_when_worker_stops():
        # gunicorn's SIGTERM handler only clears ``alive``; streams never end by themselves,
        # so end them (with a retry hint) as soon as it does, then the worker drains quickly.
        while worker.alive:
            gevent.sleep(0.2)
        relay.stop()

    gevent.spawn(stop_when_worker_stops)


def worker_exit(server, worker):
    relay = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("relay")
    if relay is not None:
        relay.stop()

# gunicorn 27 opens a control socket in $HOME by default; several relays on one host (and the
# test suite) would fight over it.
control_socket_disable = True
