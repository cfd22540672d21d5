"""The Kafka benchmark (``python -m benchmarks.kafka``) runs end to end at a trivial size.

Benchmarks are not tests: this only checks that every scenario measures what it says (each SSE
client got every record once; every webhook arrived with a valid signature), so the harness is
not found broken on the day the figures are needed. It starts its own broker (Apache Kafka when
``tests/apache_kafka.py`` can, as the benchmark does) unless ``KAFKA_BOOTSTRAP_SERVERS`` is set.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def test_kafka_benchmark_measures_every_scenario_at_a_trivial_size(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.kafka", "--scenarios", "drain,live,webhooks", "--records", "2000",
         "--clients", "5", "--processes", "1", "--producers", "1", "--rate", "300", "--seconds", "1",
         "--ladder", "", "--hooks", "200", "--hooks-limit", "15", "--drain-limit", "20", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())["scenarios"]

    drain = result["drain"]
    assert drain["complete_clients"] == 5, drain
    assert drain["unique_deliveries"] == drain["expected_deliveries"] == 10_000
    assert drain["lost"] == 0 and drain["duplicates"] == 0 and drain["records_per_s"] > 0

    live = result["live"]["run"]
    assert live["records"] == 300 and live["lost"] == 0 and live["duplicates"] == 0, live
    assert live["latency_ms"]["p99"] is not None

    hooks = result["webhooks"]
    assert hooks["unique"] == hooks["verified"] == 200 and hooks["bad_signatures"] == 0, hooks
    assert hooks["deliveries_per_s"] > 0
    assert "target" in proc.stdout and "% of a core" in proc.stdout  # figures next to targets and limits
