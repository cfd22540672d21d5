"""Every hook call goes through pluggy: wrappers run or are refused, monitoring and the trace see all.

relay calls some hooks one implementation at a time (fault isolation, ``hook_timeout``); those
calls still go through pluggy's hook executor, so ``add_hookcall_monitoring`` and the
``trace_plugins`` switch see each of them, and a wrapper on such a hook is refused at load
instead of silently never running.
"""

from __future__ import annotations

import logging
import os
import textwrap

import pytest

from relay.plugins import ISOLATED_HOOKS, PluginLoadError


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a plugin module importable by name; returns a function (name, source) -> name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text("from relay import hookimpl\n" + textwrap.dedent(source))
        return name

    return write


def make_app(tmp_path, **config):
    from relay.app import create_app

    return create_app({"data_dir": str(tmp_path / "data"), **config})


@pytest.mark.parametrize("hook", ISOLATED_HOOKS)
def test_a_wrapper_on_a_hook_called_per_implementation_is_refused_naming_plugin_and_hook(plugin_module, tmp_path,
                                                                                         hook):
    from relay import hookspecs

    params = ", ".join(hookspecs.__dict__[hook].__code__.co_varnames[:hookspecs.__dict__[hook].__code__.co_argcount])
    name = plugin_module(f"wrapping_{hook}", f"""
        @hookimpl(wrapper=True)
        def {hook}({params}):
            return (yield)
    """)
    with pytest.raises(PluginLoadError) as refused:
        make_app(tmp_path, plugins=[name])
    assert f"plugin '{name}' implements {hook} as a hook wrapper" in str(refused.value)


def test_a_wrapper_on_a_hook_called_once_runs_as_pluggy_runs_it(plugin_module, tmp_path):
    name = plugin_module("replay_wrapper", """
        SEEN = []

        @hookimpl(wrapper=True)
        def relay_replay(relay, channels, last_event_id, limit):
            answer = yield
            SEEN.append((last_event_id, answer))
            return answer
    """)
    app = make_app(tmp_path, plugins=[name])
    try:
        import replay_wrapper

        app.extensions["relay"].replay(["c"], "forgotten-id")
        assert replay_wrapper.SEEN == [("forgotten-id", None)]
    finally:
        app.extensions["relay"].stop()


def test_monitoring_sees_each_isolated_call_and_the_trace_logs_plugin_and_duration(plugin_module, tmp_path, caplog):
    name = plugin_module("counting_sink", """
        GOT = []

        @hookimpl
        def relay_transform_event(relay, event):
            return event

        @hookimpl
        def relay_deliver(relay, event):
            GOT.append(event.id)
    """)
    app = make_app(tmp_path, plugins=[name], trace_plugins=True)
    relay = app.extensions["relay"]
    calls = []
    relay.plugins.add_hookcall_monitoring(lambda hook, impls, kwargs: calls.append((hook, [i.plugin_name for i in impls])),
                                          lambda *args: None)
    try:
        with caplog.at_level(logging.INFO, "relay.trace"):
            response = app.test_client().post("/events/c", json={"event": "e", "data": 1})
            assert response.status_code == 202
            import counting_sink

            assert counting_sink.GOT == [response.get_json()["id"]]
    finally:
        relay.stop()
    assert ("relay_transform_event", [name]) in calls
    assert ("relay_deliver", [name]) in calls
    traced = [r.getMessage() for r in caplog.records if r.name == "relay.trace"]
    assert any(line.startswith(f"hook relay_deliver [{name}] ") and line.endswith(" ms") for line in traced), traced
    assert any(line.startswith("hook relay_transform_event [") for line in traced), traced


def test_durable_batches_go_whole_to_a_batch_sink_and_one_by_one_to_the_others(plugin_module, tmp_path):
    batch = plugin_module("batch_sink", """
        CALLS = []

        @hookimpl
        def relay_deliver_durable(event):
            CALLS.append(("one", event.id))

        @hookimpl
        def relay_deliver_durable_batch(events):
            CALLS.append(("batch", [e.id for e in events]))
            if any(e.data == "refuse" for e in events):
                raise RuntimeError("store down")
    """)
    single = plugin_module("single_sink", """
        CALLS = []

        @hookimpl
        def relay_deliver_durable(event):
            if event.data == "refuse":
                raise RuntimeError("no")
            CALLS.append(event.id)
    """)
    import importlib

    from relay.event import Event

    app = make_app(tmp_path, plugins=[batch, single])
    relay = app.extensions["relay"]
    events = [Event("c", "e", n, id=str(n), source="kafka") for n in range(3)]
    assert relay.deliver_durable_batch(events, batch) == 3
    assert relay.deliver_durable_batch(events, single) == 3
    assert importlib.import_module(batch).CALLS == [("batch", ["0", "1", "2"])], "one call for the batch"
    assert importlib.import_module(single).CALLS == ["0", "1", "2"]
    refused = [Event("c", "e", 7, id="7"), Event("c", "e", "refuse", id="8"), Event("c", "e", 9, id="9")]
    assert relay.deliver_durable_batch(refused, batch) == 0, "a batch is taken whole or not at all"
    assert relay.deliver_durable_batch(refused, single) == 1, "taken up to the refused event"
    assert importlib.import_module(single).CALLS[-1] == "7"
    counters = {(c["sink"], c["count"]) for c in relay.stats.snapshot()["events_out"]}
    assert (batch, 3) in counters and (single, 4) in counters


def test_publish_batch_runs_transforms_per_event_and_delivers_the_kept_ones_together(plugin_module, tmp_path):
    import importlib

    import gevent

    from relay.event import Event

    name = plugin_module("batch_plugin", """
        DELIVERED = []

        @hookimpl
        def relay_transform_event(event):
            return False if event.event == "secret" else None

        @hookimpl
        def relay_deliver(event):
            DELIVERED.append(event.data)
    """)
    relay = make_app(tmp_path, plugins=[name]).extensions["relay"]
    runs = []
    relay.bus.subscribe("c", lambda channel, event: runs.append(("one", event.data)),
                        batch=lambda channel, events: runs.append(("batch", [e.data for e in events])))
    events = [Event("c", "e", 1, source="kafka"), Event("c", "secret", 2, source="kafka"),
              Event("c", "e", 3, source="kafka"), Event("c", "e", 4, source="kafka")]
    results = relay.publish_batch(events)
    assert [r.data if r is not None else None for r in results] == [1, None, 3, 4]
    assert all(r.id for r in results if r is not None), "the backbone numbered them"
    assert runs == [("batch", [1, 3, 4])], "one hand-over for the kept events"
    gevent.sleep(0.1)  # the sinks' greenlet
    assert importlib.import_module(name).DELIVERED == [1, 3, 4]
    assert {(c["source"], c["count"]) for c in relay.stats.snapshot()["events_in"]} == {("kafka", 3)}
    relay.stop()
