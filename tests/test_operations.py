"""Operating relay: readiness, metrics, limits, logs and the CLI, over real HTTP."""

import json
import os
import subprocess
import sys

from relay.testing import free_port, http_request, publish, wait_until

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


def test_webhook_metrics(relay_server_factory):
    from webhook_support import Receiver, Reply, endpoint, webhook_config

    receiver = Receiver().start()
    try:
        receiver.script = [Reply(500)]
        server = relay_server_factory(webhook_config([endpoint(f"{receiver.url}/hook")]))
        server.publish("demo", "order", 1)
        receiver.wait_for(2, timeout=15)

        def text():
            return http_request(f"{server.url}/metrics")[2].decode()

        wait_until(lambda: 'relay_webhook_attempts_total{outcome="succeeded"} 1.0' in text(), 10)
        assert 'relay_webhook_attempts_total{outcome="retry"} 1.0' in text()
        wait_until(lambda: "relay_webhook_queue_depth 0.0" in text(), 10)
    finally:
        receiver.stop()


def test_relay_serve_runs_gunicorn_with_relay_settings(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    process = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--bind", f"127.0.0.1:{port}"], env=env,
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 20, message="relay serve")
        publish(f"http://127.0.0.1:{port}", "serve", "e", 1)
    finally:
        process.terminate()
        assert process.wait(20) == 0


def _answers(url):
    try:
        return http_request(url, timeout=1)[0] == 200
    except OSError:
        return False
