"""Operating relay: readiness, metrics, limits, logs and the CLI, over real HTTP."""

import json
import subprocess
import sys

from relay.testing import http_request, wait_until

DOWN_SOURCE_PLUGIN = '''
from relay import Source, hookimpl

class Unreachable(Source):
    name = "unreachable"

    def run(self, relay):
        while not self.stopping.is_set():
            self.set_status("down", "connection refused")
            self.stopping.wait(0.2)

@hookimpl
def relay_sources():
    return [Unreachable()]
'''


def test_healthz_is_alive_and_readyz_waits_for_sources(relay_server_factory, tmp_path):
    server = relay_server_factory()
    status, _, body = http_request(f"{server.url}/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    (tmp_path / "down_plugin.py").write_text(DOWN_SOURCE_PLUGIN)
    down = relay_server_factory({"plugins": ["down_plugin"]}, env={"PYTHONPATH": str(tmp_path)})
    wait_until(lambda: down.health()["components"]["source:unreachable"]["state"] == "down")
    status, _, body = http_request(f"{down.url}/readyz")
    assert status == 503
    assert json.loads(body)["components"]["source:unreachable"]["detail"] == "connection refused"
    assert http_request(f"{down.url}/healthz")[0] == 200  # alive all the same


def test_metrics_in_prometheus_format(relay_server_factory):
    server = relay_server_factory()
    with server.sse("/events/m") as stream:
        server.publish("m", "e", 1)
        server.publish("m", "e", 2)
        stream.events(2, 5)
        http_request(f"{server.url}/events/m", "POST", b"nope", {"Content-Type": "application/json"})
        status, headers, body = http_request(f"{server.url}/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'relay_events_in_total{source="http"} 2.0' in text
    assert 'relay_events_out_total{sink="sse"} 2.0' in text
    assert 'relay_rejected_total{reason="not_json",source="http"} 1.0' in text
    assert "relay_sse_clients 1.0" in text
    assert "relay_delivery_latency_seconds_count" in text


def test_connection_limit_answers_503_with_retry_after(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"max_connections": 2, "refused_retry_after": 7}}})
    with server.sse("/events/a"), server.sse("/events/b"):
        with server.sse("/events/c") as third:
            assert third.status == 503 and third.response_headers["retry-after"] == "7"
    wait_until(lambda: server.health()["components"]["sse"]["clients"] == 0)
    with server.sse("/events/c") as again:
        assert again.status == 200
    assert "refused a stream" in server.log()


def test_publish_rate_limit_per_client(relay_server_factory):
    server = relay_server_factory({"publish": {"rate": 0.5, "burst": 2}})
    statuses = []
    for _ in range(3):
        status, headers, body = http_request(f"{server.url}/events/r", "POST", b'{"event":"e"}',
                                             {"Content-Type": "application/json"})
        statuses.append(status)
    assert statuses == [202, 202, 429]
    assert int(headers["Retry-After"]) >= 1 and "publishes per second" in json.loads(body)["message"]


def test_json_logs_name_the_worker(relay_server_factory):
    server = relay_server_factory(env={"RELAY_LOG_FORMAT": "json"})
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    started = [line for line in lines if line["message"].startswith("relay started")]
    assert started and isinstance(started[0]["worker"], int) and started[0]["level"] == "info"


def test_cli_publish_reaches_a_stream(relay_server):
    with relay_server.sse("/events/cli") as stream:
        result = subprocess.run([sys.executable, "-m", "relay", "publish", "cli", "emote", '{"emote":"dolphin"}',
                                 "--url", relay_server.url], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        event = stream.next_event(5)
    assert (event.event, event.json()) == ("emote", {"emote": "dolphin"})
