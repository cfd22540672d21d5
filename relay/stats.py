"""Counters kept by a worker, labelled like metrics: ``stats.incr("rejected", source="redis")``."""

from __future__ import annotations

from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._counts: Counter[tuple] = Counter()

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counts[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> int:
        """The sum over every label set that includes ``labels``."""
        wanted = set(labels.items())
        return sum(n for (key, lab), n in self._counts.items() if key == name and wanted <= set(lab))

    def snapshot(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for (name, labels), count in sorted(self._counts.items()):
            out.setdefault(name, []).append({**dict(labels), "count": count})
        return out
