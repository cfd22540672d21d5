"""A worker's counters: ``stats.incr("rejected", source="redis", reason="not_json")``.

Each call updates the per-worker figures shown in ``/healthz`` and, for names registered in
:mod:`relay.metrics`, the Prometheus metric of the same name (summed across workers on
``/metrics``). Plugins may count under names of their own; those appear in ``/healthz`` only.
"""

from __future__ import annotations

from collections import Counter

from relay import metrics


class Stats:
    def __init__(self) -> None:
        self._counts: Counter[tuple] = Counter()
        self._gauges: dict[tuple, float] = {}

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counts[(name, tuple(sorted(labels.items())))] += amount
        counter = metrics.COUNTERS.get(name)
        if counter is not None:
            (counter.labels(**labels) if labels else counter).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[(name, tuple(sorted(labels.items())))] = value
        gauge = metrics.GAUGES.get(name)
        if gauge is not None:
            (gauge.labels(**labels) if labels else gauge).set(value)

    def observe(self, name: str, value: float) -> None:
        """One observation of a histogram registered in relay.metrics (``delivery_latency``)."""
        histogram = metrics.HISTOGRAMS.get(name)
        if histogram is not None:
            histogram.observe(value)

    def snapshot(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for (name, labels), count in sorted(self._counts.items()):
            out.setdefault(name, []).append({**dict(labels), "count": count})
        for (name, labels), value in sorted(self._gauges.items()):
            out.setdefault(name, []).append({**dict(labels), "value": value})
        return out
