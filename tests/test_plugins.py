"""Plugins: loading through entry points and the plugins setting, the per-event hooks, fault isolation."""

import json
import subprocess
import sys
import textwrap

import pytest

from relay import hookspecs
from relay.testing import RelayServer, http_request, wait_until

GOOD_PLUGIN = '''
import json, os
from relay import Event, hookimpl

@hookimpl
def relay_transform_event(event):
    if event.event == "secret":
        return False                       # filtered out
    if event.event == "shout":
        return Event(event.channel, "shout", str(event.data).upper(), source=event.source)

@hookimpl
def relay_deliver(event):
    with open(os.environ["SINK_FILE"], "a") as fh:
        fh.write(json.dumps({"id": event.id, "event": event.event, "data": event.data}) + "\\n")
'''

BROKEN_PLUGIN = '''
from relay import hookimpl

@hookimpl
def relay_transform_event(event):
    raise RuntimeError("transform bug")

@hookimpl
def relay_deliver(event):
    raise RuntimeError("sink bug")

@hookimpl
def relay_health():
    raise RuntimeError("health bug")
'''


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "good_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    (tmp_path / "typo_plugin.py").write_text("from relay import hookimpl\n\n@hookimpl\n"
                                             "def relay_deliverr(event):\n    pass\n")
    return tmp_path


def test_transform_filter_and_deliver_hooks(relay_server_factory, plugin_dir):
    sink = plugin_dir / "sink.jsonl"
    server = relay_server_factory({"plugins": ["good_plugin"]},
                                  env={"PYTHONPATH": str(plugin_dir), "SINK_FILE": str(sink)})
    with server.sse("/events/p") as stream:
        server.publish("p", "shout", "hello")
        dropped = server.publish("p", "secret", "hidden")
        server.publish("p", "plain", "as is")
        shout, plain = stream.events(2, 5)
    assert dropped == {"id": None, "dropped": True}
    assert (shout.event, shout.data) == ("shout", "HELLO") and plain.data == "as is"
    lines = wait_until(lambda: sink.exists() and len(sink.read_text().splitlines()) == 2 and sink.read_text())
    assert [json.loads(line)["data"] for line in lines.splitlines()] == ["HELLO", "as is"]


def test_a_broken_plugin_does_not_stop_delivery_to_others(relay_server_factory, plugin_dir):
    sink = plugin_dir / "sink.jsonl"
    server = relay_server_factory({"plugins": ["good_plugin", "broken_plugin"]},
                                  env={"PYTHONPATH": str(plugin_dir), "SINK_FILE": str(sink)})
    with server.sse("/events/p") as stream:
        for i in range(3):
            server.publish("p", "n", i)
        assert [e.json() for e in stream.events(3, 5)] == [0, 1, 2]
    wait_until(lambda: sink.exists() and len(sink.read_text().splitlines()) == 3, message="good sink got all 3")
    health = server.health()  # the worker is alive, and says who failed
    errors = {(c["plugin"], c["hook"]): c["count"] for c in health["counters"]["plugin_errors"]}
    assert errors[("broken_plugin", "relay_deliver")] == 3
    assert errors[("broken_plugin", "relay_transform_event")] == 3
    assert errors[("broken_plugin", "relay_health")] >= 1
    assert "plugin broken_plugin failed in relay_deliver" in server.log()


def test_unknown_hook_name_stops_start_up_naming_the_plugin(plugin_dir, tmp_path):
    server = RelayServer({"plugins": ["typo_plugin"]}, env={"PYTHONPATH": str(plugin_dir)},
                         directory=tmp_path / "r")
    with pytest.raises(RuntimeError) as info:
        server.start()
    assert "typo_plugin" in str(info.value) and "relay_deliverr" in str(info.value)


def test_missing_plugin_module_is_named(plugin_dir, tmp_path):
    server = RelayServer({"plugins": ["no_such_plugin"]}, directory=tmp_path / "r")
    with pytest.raises(RuntimeError) as info:
        server.start()
    assert "plugin module 'no_such_plugin'" in str(info.value)


def test_builtins_load_through_the_entry_point_group():
    result = subprocess.run([sys.executable, "-m", "relay", "plugins"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith(" ")}
    for name in ("sse", "http_publish"):
        assert "relay-events 0." in rows[name]  # loaded from the relay-events distribution's entry points


def test_disabled_plugin_is_not_loaded(relay_server_factory):
    server = relay_server_factory(env={"RELAY_DISABLE_PLUGINS": "sse"})
    assert "sse" not in server.health()["components"]
    status, headers, _ = http_request(f"{server.url}/events/x")
    allow = {k.lower(): v for k, v in headers.items()}["allow"]
    assert status == 405 and "GET" not in allow  # only http_publish's POST is left


def test_every_hookspec_is_prefixed_and_documented():
    # Every function pluggy takes as a hookspec (marked by @hookspec), whatever its name.
    specs = [name for name, obj in vars(hookspecs).items()
             if callable(obj) and hasattr(obj, "relay_spec")]
    assert len(specs) >= 10, f"hookspecs not found: {specs}"
    for name in specs:
        assert name.startswith("relay_"), f"hookspec {name} must start with relay_"
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(textwrap.dedent(doc).strip()) > 80, f"{name} needs a docstring a plugin author can work from"


MISBEHAVING_PLUGIN = '''
import time
from relay import Event, Source, hookimpl

class Flaky(Source):
    name = "flaky"
    runs = 0

    def run(self, relay):
        Flaky.runs += 1
        relay.publish(Event("flaky", "run", Flaky.runs, source="flaky"))
        self.set_status("up")
        raise ConnectionError(f"lost the broker (run {Flaky.runs})")

@hookimpl
def relay_sources():
    return [Flaky(), "not a source"]

@hookimpl
def relay_deliver(event):
    if event.event == "block":
        time.sleep(60)          # cooperative under gevent: interrupted after hook_timeout

@hookimpl
def relay_health():
    return ["garbage"]
'''


def test_blocking_sink_is_interrupted_and_a_dying_source_is_restarted(relay_server_factory, plugin_dir):
    (plugin_dir / "misbehaving_plugin.py").write_text(MISBEHAVING_PLUGIN)
    sink = plugin_dir / "sink.jsonl"
    server = relay_server_factory({"plugins": ["good_plugin", "misbehaving_plugin"], "hook_timeout": 0.5},
                                  env={"PYTHONPATH": str(plugin_dir), "SINK_FILE": str(sink)})
    with server.sse("/events/p") as stream:
        server.publish("p", "block", 1)          # returns once the blocking sink is cut off
        assert stream.next_event(2).event == "block"
    wait_until(lambda: sink.exists() and "block" in sink.read_text(), message="the good sink got the event")

    def failures():
        counts = server.health()["counters"].get("source_failures", [])
        return sum(c["count"] for c in counts if c.get("source") == "flaky")

    # Barrier on what the relay reports (two failures counted), not on how long the backoff takes.
    # (the backoff itself is checked in tests/test_supervisor.py)
    wait_until(lambda: failures() >= 2, 15, message="the flaky source to fail twice")
    with server.sse("/events/flaky") as stream:   # and each new run is live again: it publishes
        run = stream.next_event(10)
    assert run.event == "run" and run.json() > 2
    health = server.health()
    source = health["components"]["source:flaky"]
    assert source["plugin"] == "misbehaving_plugin" and "lost the broker" in source["detail"]
    errors = {(c["plugin"], c["hook"]) for c in health["counters"]["plugin_errors"]}
    assert {("misbehaving_plugin", "relay_deliver"), ("misbehaving_plugin", "relay_sources"),
            ("misbehaving_plugin", "relay_health")} <= errors
    assert health["counters"]["source_failures"][0]["count"] >= 2
    assert "took longer than 0.5s" in server.log()
