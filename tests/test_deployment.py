"""The deployment guide's nginx set-up, as written in deploy/nginx.conf, in front of two instances."""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from relay.testing import SSEClient, follow, free_port, http_request, wait_until
from test_restarts import SteadyPublisher, sse_clients

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def nginx(tmp_path):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is not installed (apt-get install nginx; .ci/run does it)")
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    processes = []

    def start(upstream_a: int, upstream_b: int) -> str:
        conf = (ROOT / "deploy/nginx.conf").read_text()
        conf = conf.replace("127.0.0.1:8001", f"127.0.0.1:{upstream_a}").replace(
            "127.0.0.1:8002", f"127.0.0.1:{upstream_b}").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        (prefix / "nginx.conf").write_text(conf)
        process = subprocess.Popen([binary, "-p", str(prefix), "-c", "nginx.conf"],
                                   stdout=subprocess.DEVNULL, stderr=open(prefix / "error.log", "wb"))
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/healthz"), 10, message="nginx")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _answers(url):
    try:
        return http_request(url, timeout=1)[0] == 200
    except OSError:
        return False


def backbone(redis_server):
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": "deploy:", "health_interval": 0.5}},
            "sinks": {"sse": {"heartbeat": 0.3, "retry": 200}}}


def test_events_and_heartbeats_pass_through_nginx_unbuffered(relay_server_factory, redis_server, nginx):
    a = relay_server_factory(backbone(redis_server), workers=2)
    b = relay_server_factory(backbone(redis_server), workers=2)
    url = nginx(a.port, b.port)
    with SSEClient(f"{url}/events/demo") as stream:
        assert stream.status == 200 and stream.response_headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 3
        while "heartbeat" not in stream.comments and time.monotonic() < deadline:
            stream.read_some(0.5)
        assert "heartbeat" in stream.comments  # a 0.3 s heartbeat came through at once
        started = time.monotonic()
        status, _, _ = http_request(f"{url}/events/demo", "POST", b'{"event":"emote","data":{"emote":"dolphin"}}',
                                    {"Content-Type": "application/json"})
        event = stream.next_event(2)
        assert status == 202 and event.json() == {"emote": "dolphin"}
        assert time.monotonic() - started < 1.0


def test_clients_of_a_killed_instance_resume_on_the_other_without_gap(relay_server_factory, redis_server, nginx):
    a = relay_server_factory(backbone(redis_server), workers=2)
    b = relay_server_factory(backbone(redis_server), workers=2)
    url = nginx(a.port, b.port)
    publisher = SteadyPublisher(b, "failover", 120)
    results: dict[int, list] = {}
    reconnects: list[int] = []

    def reader(n):
        results[n] = follow(f"{url}/events/failover", 120, timeout=60, on_reconnect=reconnects.append)

    readers = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(4)]
    for thread in readers:
        thread.start()
    # Barrier: publish only once all four streams are subscribed, on whichever workers of A and
    # B nginx sent them to (a reader's first connection has no Last-Event-ID to resume from).
    wait_until(lambda: sse_clients(a) + sse_clients(b) == 4, 10, message="the 4 readers to be subscribed")
    publisher.start()
    wait_until(lambda: len(publisher.ids) >= 40, 30, message="40 events before the kill")
    a.kill()  # SIGKILL, arbiter and workers: its streams break mid-event
    for thread in readers:
        thread.join(70)
    publisher.join(10)
    assert len(publisher.ids) == 120
    assert reconnects, "no reader was on the killed instance (nginx round-robins, so some must be)"
    for n, events in results.items():
        assert [e.id for e in events] == publisher.ids, f"reader {n} lost or repeated events"
