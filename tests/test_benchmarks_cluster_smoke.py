"""``python -m benchmarks.cluster`` end to end at a trivial size (benchmarks are not tests; this
checks the harness): real Redis Clusters, two relays on the cluster backbone, the publishers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_cluster_benchmark_counts_routed_traffic_and_publish_capacity(tmp_path):
    for program in ("redis-server", "redis-cli"):
        if not shutil.which(program):
            pytest.fail(f"{program} is not installed: apt-get install redis-server (.ci/run does)", pytrace=False)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--events", "300", "--rate", "300", "--clients", "1",
         "--seconds", "1", "--publishers", "1", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    routed = result["routed"]
    assert (routed["published"], routed["publish_errors"]) == (300, 0)
    a, b = routed["workers"]["A"], routed["workers"]["B"]
    # Routing: A, whose stream watches 1 of the 100 channels, hears exactly that channel's events.
    assert (a["heard_messages"], b["heard_messages"]) == (3, 300)
    assert (a["subscribed_channels"], b["subscribed_channels"]) == (1, 100)
    assert (a["shard_connections"], b["shard_connections"]) == (1, 3)
    assert (a["deliveries"], b["deliveries"]) == (3, 300)  # what the SSE clients counted
    assert 0.005 < routed["ratio_bytes"] < 0.02
    assert [c["masters"] for c in result["capacity"]] == [1, 3, 1]
    for capacity in result["capacity"]:
        assert capacity["events"] > 0 and capacity["errors"] == 0, capacity
        assert capacity["redis_us_per_event"] > 0
    assert "A/B: messages 0.0100" in proc.stdout and "3 masters / 1 master" in proc.stdout
