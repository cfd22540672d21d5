"""The benchmark harness runs end to end at a trivial size (relay only; benchmarks are not tests)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent



def test_harness_measures_relay_at_a_trivial_size(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)", pytrace=False)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--systems", "relay", "--scenarios", "fanout-100x200",
         "--clients", "5", "--seconds", "0.2", "--processes", "2", "--drain", "5", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    relay = result["scenarios"]["fanout-100x200"]["relay"]
    assert "error" not in relay, relay
    run = relay["run"]
    assert relay["clients"] == 5 and run["messages"] == 20
    assert run["expected"] == 100 and run["received"] == 100 and run["lost"] == 0
    assert run["out_of_order"] == 0 and run["duplicates"] == 0
    assert relay["redis_connections"] == 1  # one subscriber per worker, whatever the clients
    assert run["latency_ms"]["p99"] is not None and run["server_cpu_s"] >= 0
    assert "relay" in proc.stdout and "p99 latency" in proc.stdout  # the table
