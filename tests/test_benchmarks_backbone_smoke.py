"""The backbone scenarios run end to end at a trivial size: relay on its in-memory and on its
Redis backbone, events published over HTTP (benchmarks are not tests; this checks the harness)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_backbone_scenarios_measure_both_backbones_over_http(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)", pytrace=False)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--scenarios", "backbone-20x200,backbone-publish",
         "--clients", "3", "--seconds", "0.5", "--rate", "40", "--passes", "1", "--processes", "1",
         "--drain", "5", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["systems"] == ["relay-memory", "relay-redis"]
    for system in ("relay-memory", "relay-redis"):
        measured = result["scenarios"]["backbone-20x200"][system]
        assert "error" not in measured, measured
        run = measured["run"]
        # Every event published over HTTP reached every client, in order: through the backbone.
        assert (run["messages"], run["expected"], run["received"], run["lost"]) == (20, 60, 60, 0)
        assert run["out_of_order"] == 0 and run["duplicates"] == 0
        assert run["worker_cpu_us_per_delivery"] > 0 and run["worker_cpu_us_per_event"] > 0
        alone = result["scenarios"]["backbone-publish"][system]["run"]
        assert alone["expected"] == 0 and alone["lost"] == 0 and alone["worker_cpu_us_per_event"] > 0
    # Only the Redis backbone holds connections to Redis (its subscription, its publisher and the
    # pool presence counts subscribers with): the in-memory one publishes without Redis.
    assert result["scenarios"]["backbone-20x200"]["relay-memory"]["redis_connections"] == 0
    assert result["scenarios"]["backbone-20x200"]["relay-redis"]["redis_connections"] >= 2
    assert "relay-redis/relay-memory" in proc.stdout and "Redis backbone CPU per delivery" in proc.stdout
