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
