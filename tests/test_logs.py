"""Logs (issue 17, point 2), read from a real gunicorn's combined standard output and error:
every line JSON under ``log_format = "json"`` (gunicorn's own included), the optional access log
in both formats, and refused publishes logged with their reason but never their body."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from relay.testing import RelayServer, http_request, wait_until

JSON = {"Content-Type": "application/json"}


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of ``text`` as a JSON object with level, logger and message; fails
    naming the first line that is not."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert all(isinstance(record.get(key), str) for key in ("level", "logger", "message")), line
        records.append(record)
    return records


def access_records(server: RelayServer) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines()
            if line.startswith("{") and '"gunicorn.access"' in line]


def test_json_log_format_makes_every_line_json_gunicorns_own_included(relay_server_factory):
    server = relay_server_factory(env={"RELAY_LOG_FORMAT": "json", "RELAY_ACCESS_LOG": "combined"})
    status, _, _ = http_request(f"{server.url}/events/logs", "POST", b'{"data": {"pin": "2468-BODY"}}', JSON)
    assert status == 422
    first_worker = server.log().count("Booting worker")
    server.process.send_signal(signal.SIGHUP)  # gunicorn's reload: a new worker, the old one exits
    wait_until(lambda: server.log().count("relay started") == 2 and "Worker exiting" in server.log(), 15,
               message="the reload")
    assert server.stop() == 0
    records = json_lines(server.log())
    messages = [r["message"] for r in records]
    for expected in ("Listening at", "Booting worker", "Handling signal: hup", "Handling signal: term",
                     "Worker exiting", "Shutting down", "relay started"):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    assert server.log().count("Booting worker") == first_worker + 1
    # The access log's combined line becomes the message of a JSON record.
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert any('"POST /events/logs HTTP/1.1" 422 ' in r["message"] for r in access), access
    # The refused publish, with structured fields.
    refused = [r for r in records if r["message"].startswith("publish refused")]
    assert len(refused) == 1 and refused[0]["level"] == "info"
    assert {k: refused[0][k] for k in ("status", "error", "channel", "client")} == {
        "status": 422, "error": "invalid_event", "channel": "logs", "client": "127.0.0.1"}
    assert refused[0]["detail"].startswith("event: is required")
    assert "2468-BODY" not in server.log()


def test_json_log_format_covers_a_refused_start_up(tmp_path):
    """The configuration check runs in a child process before any worker: its complaint is JSON too."""
    server = RelayServer({"sinks": {"sse": {"hartbeat": 5}}}, env={"RELAY_LOG_FORMAT": "json"}, directory=tmp_path)
    with pytest.raises(RuntimeError):
        server.start(timeout=20)
    assert server.process.returncode != 0
    records = json_lines(server.log())
    errors = [r for r in records if r["level"] == "error"]
    assert any("sinks.sse.hartbeat: unknown key" in r["message"] for r in errors), records


def test_access_log_json_one_line_per_request_streams_when_they_end(relay_server_factory):
    server = relay_server_factory(env={"RELAY_ACCESS_LOG": "json"})  # log_format stays plain
    published = server.publish("logs", "first", {"n": 1})
    query = "access_token=SECRET-TOKEN-42&lastEventId=" + published["id"]

    def stream_lines():
        return [r for r in access_records(server) if (r["method"], r["path"]) == ("GET", "/events/logs")]

    with server.sse(f"/events/logs?{query}") as stream:
        server.publish("logs", "second", {"n": 2})
        assert stream.next_event(5).event == "second"
        assert stream.no_event_within(1.0)
        assert not stream_lines(), "logged before it ended"
    line = wait_until(stream_lines, 10, message="the stream's access line")[0]
    assert (line["method"], line["status"], line["remote_addr"]) == ("GET", 200, "127.0.0.1")
    assert line["query"] == "access_token=REDACTED&lastEventId=" + published["id"]
    assert line["duration"] >= 1.0 and line["bytes"] > len("retry: 3000\n\nevent: second\n")
    assert line["message"] == "GET /events/logs 200"
    posts = [r for r in access_records(server) if r["method"] == "POST"]
    assert [(r["path"], r["status"]) for r in posts] == [("/events/logs", 202), ("/events/logs", 202)]
    assert all(r["bytes"] > 0 and 0 <= r["duration"] < 5 for r in posts)
    # A stream still open at shutdown is logged when shutdown ends it.
    open_stream = server.sse("/events/held")
    try:
        assert open_stream.status == 200
        server.stop()
    finally:
        open_stream.close()
    assert [r["status"] for r in access_records(server) if r["path"] == "/events/held"] == [200]
    assert "SECRET-TOKEN-42" not in server.log()
    # relay's other lines keep the plain format
    assert any(" INFO relay: relay started" in line for line in server.log().splitlines())


COMBINED = re.compile(r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
                      r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+) '
                      r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)" (?P<duration>\d+\.\d{3})$')


def test_access_log_combined_format(relay_server_factory):
    server = relay_server_factory(env={"RELAY_ACCESS_LOG": "combined"})
    http_request(f"{server.url}/healthz?x=1&access_token=SECRET-TOKEN-7", headers={
        "Referer": "https://app.example/page", "User-Agent": 'probe "quoted"/1'})
    http_request(f"{server.url}/events/logs", "POST", b"event=form",
                 {"Content-Type": "application/x-www-form-urlencoded"})

    def access_lines():  # (the harness's own /healthz polls come first, without a query)
        matches = [COMBINED.match(line) for line in server.log().splitlines()]
        return [m for m in matches if m and m["request"] != "GET /healthz HTTP/1.1"]

    health, refused = wait_until(lambda: len(access_lines()) == 2 and access_lines(), 10, message="two access lines")
    assert health["request"] == "GET /healthz?x=1&access_token=REDACTED HTTP/1.1"
    assert (health["status"], health["referer"]) == ("200", "https://app.example/page")
    assert health["agent"] == 'probe \\"quoted\\"/1'
    assert int(health["bytes"]) > 100  # the health JSON
    assert (refused["request"], refused["status"], refused["referer"]) == ("POST /events/logs HTTP/1.1", "415", "-")
    assert int(refused["bytes"]) > 0 and float(refused["duration"]) < 5
    assert "SECRET-TOKEN-7" not in server.log()


def test_refused_publishes_are_logged_without_their_body_and_no_access_log_by_default(relay_server_factory):
    server = relay_server_factory()
    status, _, _ = http_request(f"{server.url}/events/logs", "POST", b'{"data": {"card": "4111-SECRET-JSON"}}', JSON)
    assert status == 422
    status, _, _ = http_request(f"{server.url}/events/logs", "POST", b"card=4111-SECRET-FORM",
                                {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, _ = http_request(f"{server.url}/events/logs", "POST", b'{"event": "x", "data": "4111-SECRET-BIG' +
                                b"x" * 70_000 + b'"}', JSON)
    assert status == 413

    def refused():
        return [line for line in server.log().splitlines() if "refused: " in line]

    lines = wait_until(lambda: len(refused()) == 3 and refused(), 10, message="three refusals logged")
    expected = [
        ("INFO relay.publish: publish refused: 422 invalid_event", "on channel 'logs' from 127.0.0.1",
         "event: is required"),
        ("INFO relay.publish: publish refused: 415 unsupported_media_type", "on channel 'logs' from 127.0.0.1",
         "Content-Type must be application/json; got 'application/x-www-form-urlencoded'"),
        ("INFO relay.http: request refused: 413 request_entity_too_large", "on POST /events/logs from 127.0.0.1",
         "larger than max_body_size"),
    ]
    for line, parts in zip(lines, expected, strict=True):
        assert all(part in line for part in parts), (line, parts)
    assert "4111" not in server.log()
    assert "HTTP/1.1" not in server.log()  # no access log unless asked for


def test_log_settings_are_read_and_checked_before_the_app_exists(tmp_path, monkeypatch):
    """gunicorn's arbiter reads log_format/access_log without building the app, against the schema's
    choices: a bad value falls back to the default there (check-config then stops start-up)."""
    from relay.logs import early_setting

    for name in ("RELAY_LOG_FORMAT", "RELAY_ACCESS_LOG", "RELAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert (early_setting("log_format"), early_setting("access_log")) == ("plain", "off")
    path = tmp_path / "relay.toml"
    path.write_text('log_format = "json"\naccess_log = "combined"\n')
    monkeypatch.setenv("RELAY_CONFIG", str(path))
    assert (early_setting("log_format"), early_setting("access_log")) == ("json", "combined")
    monkeypatch.setenv("RELAY_ACCESS_LOG", "json")  # the environment wins, as in the app
    assert early_setting("access_log") == "json"
    monkeypatch.setenv("RELAY_LOG_FORMAT", "yaml")
    assert early_setting("log_format") == "plain"
    path.write_text("log_format = = \n")
    monkeypatch.delenv("RELAY_LOG_FORMAT")
    assert early_setting("log_format") == "plain"


def test_the_arbiters_logging_imports_nothing_gevent_would_patch():
    """gunicorn's arbiter imports the logger class and reads the settings before the workers fork
    and gevent monkey-patches: none of that may import gevent, ssl or the app."""
    code = ("import sys; import relay.gunicorn_config, relay.gunicorn_logging; "
            "relay.logs.early_setting('access_log'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gevent', 'ssl', 'flask', 'werkzeug', 'redis', 'kafka', 'prometheus_client') or m == 'relay.app'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == "[]"


def test_a_bad_access_log_value_stops_start_up(monkeypatch):
    from relay.app import create_app
    from relay.config import ConfigError

    monkeypatch.setenv("RELAY_ACCESS_LOG", "loud")
    with pytest.raises(ConfigError) as error:
        create_app({})
    assert "access_log: 'loud' is not allowed" in str(error.value) and "'combined'" in str(error.value)


@pytest.mark.parametrize("query, expected", [
    ("", ""),
    ("access_token=abc", "access_token=REDACTED"),
    ("channel=a&access_token=abc&channel=b", "channel=a&access_token=REDACTED&channel=b"),
    ("access%5Ftoken=abc&access_token", "access%5Ftoken=REDACTED&access_token"),
    ("access_tokens=keep&token=keep", "access_tokens=keep&token=keep"),
])
def test_redact_query(query, expected):
    from relay.logs import redact_query

    assert redact_query(query) == expected


CRASHING_PLUGIN = '''
import gevent

import relay


@relay.hookimpl
def relay_init_app(app, relay):
    @app.get("/crash-a-greenlet")
    def crash():
        gevent.spawn(lambda: 1 / 0)  # uncaught: gevent would print a bare traceback
        return "spawned"
'''


def test_json_log_format_covers_a_crashed_greenlet(tmp_path):
    (tmp_path / "crashing_plugin.py").write_text(CRASHING_PLUGIN)
    server = RelayServer(env={"RELAY_LOG_FORMAT": "json", "RELAY_PLUGINS": "crashing_plugin"}, directory=tmp_path)
    try:
        server.start()
        assert http_request(f"{server.url}/crash-a-greenlet")[0] == 200
        wait_until(lambda: "ZeroDivisionError" in server.log(), 10, message="the greenlet's error logged")
    finally:
        server.stop()
    records = json_lines(server.log())
    crashed = [r for r in records if "failed with ZeroDivisionError" in r["message"]]
    assert crashed and crashed[0]["level"] == "error" and "1 / 0" in crashed[0]["exception"]
