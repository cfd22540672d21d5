"""Prometheus metrics, added up across gunicorn workers (prometheus-client's multiprocess mode).

gunicorn's arbiter points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it forks (see
relay/gunicorn_config.py), so every worker writes its figures there and ``/metrics`` on any
worker reports the sum. Without that variable (tests, other servers) the figures are this
process's own.

Code does not call these objects directly: ``relay.stats.incr(name, **labels)`` and
``relay.stats.set(name, value, **labels)`` update both the per-worker counters shown in
``/healthz`` and the metric registered here under the same name.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

COUNTERS = {
    "events_in": Counter("relay_events_in_total", "Events accepted into the backbone, by source", ["source"]),
    "events_out": Counter("relay_events_out_total", "Events handed to a sink, by sink", ["sink"]),
    "rejected": Counter("relay_rejected_total", "Messages and requests rejected, by source and reason",
                        ["source", "reason"]),
    "dropped": Counter("relay_dropped_total", "Events dropped by a transform plugin", ["plugin"]),
    "plugin_errors": Counter("relay_plugin_errors_total", "Plugin hooks that raised or timed out",
                             ["plugin", "hook"]),
    "source_failures": Counter("relay_source_failures_total", "Source runs that ended in an error", ["source"]),
    "sse_disconnected_slow": Counter("relay_sse_disconnected_slow_total",
                                     "SSE clients disconnected because their queue overflowed", []),
    "sse_refused": Counter("relay_sse_refused_total", "SSE connections refused at a connection limit, by "
                           "reason (too_many_connections: the worker's, too_many_connections_from_address)",
                           ["reason"]),
    "sse_unframeable": Counter("relay_sse_unframeable_total",
                               "Events skipped by the SSE writer because no SSE frame could be built", []),
    "sse_replay_errors": Counter("relay_sse_replay_errors_total", "Resumes whose history lookup failed", []),
    "backbone_lost": Counter("relay_backbone_lost_total",
                             "Times the Redis backbone found Redis had lost events it acknowledged", []),
    "sse_missed": Counter("relay_sse_missed_total", "Resumes that could not replay everything", ["reason"]),
    "rate_limited": Counter("relay_rate_limited_total", "Publish requests refused by the rate limit", []),
    "receiver_errors": Counter("relay_receiver_errors_total", "Bus receivers that raised", []),
    "webhook_attempts": Counter("relay_webhook_attempts_total", "Webhook delivery attempts, by outcome",
                                ["outcome"]),
}

GAUGES = {
    # livesum: the sum over live workers; livemin: a source is up only when it is up everywhere.
    "sse_clients": Gauge("relay_sse_clients", "Connected SSE clients", [], multiprocess_mode="livesum"),
    "source_up": Gauge("relay_source_up", "1 when the source is connected", ["source"], multiprocess_mode="livemin"),
    "webhook_queue": Gauge("relay_webhook_queue_depth", "Webhook deliveries waiting", [],
                           multiprocess_mode="livemax"),
}

DELIVERY_LATENCY = Histogram("relay_delivery_latency_seconds",
                             "From acceptance by relay to the write to an SSE client",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
HISTOGRAMS = {"delivery_latency": DELIVERY_LATENCY}


def exposition() -> tuple[bytes, str]:
    """The text for ``/metrics``: every worker's figures in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
