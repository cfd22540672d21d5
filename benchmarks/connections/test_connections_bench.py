"""Checks of the many-connections scenario's harness (benchmarks are not tests; these check the measuring).

    python -m pytest benchmarks/connections/test_connections_bench.py -q -p no:cacheprovider

1. The Go load client's parser (``go test``): events, chunk-size lines and heartbeats cut between
   two reads anywhere are counted once; duplicates and out-of-order events are told apart.
2. The whole scenario at a trivial size against a real relay (2 workers on a real Redis backbone):
   every stream connects from several source addresses, gets its heartbeats, then every event
   published over HTTP, once, with a latency; every process it started is gone afterwards.
3. A relay that refuses streams (its worker's open-file limit) shows as streams not reached, with
   the refusals named, not as a pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import connections, procstat


def _needs(*programs: str) -> None:
    for program in programs:
        if not shutil.which(program):
            pytest.fail(f"{program} is not installed (Go: the load client; redis-server: the backbone)",
                        pytrace=False)


def _descendants() -> set[int]:
    import os

    return set(procstat.tree(os.getpid())) - {os.getpid()}


@pytest.mark.timeout(180)
def test_the_load_clients_parser():
    _needs("go")
    proc = subprocess.run(["go", "test", "-count=1", "./..."], cwd=HERE, capture_output=True, text=True,
                          timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(240)
def test_every_stream_gets_its_heartbeats_and_every_event_once(tmp_path):
    _needs("go", "redis-server")
    args = connections.parse_args(["--clients", "300", "--workers", "2", "--heartbeat", "1", "--idle", "3.5",
                                   "--seconds", "3", "--rate", "2", "--drain", "20", "--out", str(tmp_path)])
    result = connections.run(args)
    assert result["connect"]["ok"] == 300 and result["connect"]["failed"] == 0
    assert sum(result["streams_per_worker"]) >= 300  # both workers' sockets hold them
    assert result["idle"]["open"] == 300 and result["idle"]["streams_without_heartbeat"] == 0
    assert result["idle"]["heartbeats"] >= 300 * 2  # one a second for 3.5 s, each stream
    publish = result["publish"]
    assert publish["statuses"] == {"202": 6}  # a bearer token was needed, and given
    assert publish["expected"] == publish["received"] == 300 * 6
    assert publish["missing"] == 0 and publish["duplicates"] == 0 and publish["out_of_order"] == 0
    assert 0 <= publish["latency_ms"][50] <= publish["latency_ms"][99] < 5000
    assert result["memory"]["rss_per_connection_kb"] > 0
    assert result["relay_metrics"]["relay_sse_clients"] == 300
    assert all(target["met"] for target in result["targets"].values())
    assert not _descendants()  # redis-server, gunicorn and the load clients all stopped


@pytest.mark.timeout(240)
def test_streams_a_worker_cannot_hold_are_reported_with_why(tmp_path):
    _needs("go", "redis-server")
    # One worker of 450 connections (the open-file limit less 300 of its own): 350 streams at most.
    argv = [sys.executable, "-m", "benchmarks.connections", "--clients", "500", "--workers", "1",
            "--retries", "2", "--connect-timeout", "20", "--idle", "0", "--seconds", "1", "--drain", "10",
            "--out", str(tmp_path)]
    proc = subprocess.run(["prlimit", "--nofile=750:750", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=200, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a target missed
    assert "350 open" in proc.stdout and "150 failed {'HTTP 503': 150}" in proc.stdout, proc.stdout
    assert "target connections: MISSED" in proc.stdout
