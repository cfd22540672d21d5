"""relay.signals: what happens inside relay, as blinker signals that metrics, logs and plugins share.

In-process, Flask style: the ``app``/``client`` fixtures and ``Signal.connected_to``.
"""

from __future__ import annotations

import logging
import os
import textwrap

import pytest

from relay import signals
from relay.api import BadMessage, Source, reject


def record(calls):
    def receiver(sender, **kwargs):
        calls.append((sender, kwargs))
    return receiver


def counter(client, name, **labels) -> int:
    rows = client.get("/healthz").get_json()["counters"].get(name, [])
    return sum(r.get("count", 0) for r in rows if all(r.get(k) == v for k, v in labels.items()))


def test_a_publish_signals_event_published_with_its_id_and_is_counted(app, client):
    relay, calls = app.extensions["relay"], []
    with signals.event_published.connected_to(record(calls), sender=relay):
        response = client.post("/events/c", json={"event": "e", "data": 1})
    assert response.status_code == 202
    [(sender, kwargs)] = calls
    assert sender is relay and kwargs["event"].id == response.get_json()["id"]
    assert counter(client, "events_in", source="http") == 1


def test_refused_publishes_and_bad_broker_messages_signal_event_rejected(app, client, caplog):
    relay, calls = app.extensions["relay"], []
    with signals.event_rejected.connected_to(record(calls), sender=relay), caplog.at_level(logging.WARNING):
        assert client.post("/events/c", json={"data": 1}).status_code == 422
        reject(relay, "redis", "channel 'orders'", b"{not json", BadMessage("not_json", "Expecting value"))
    assert [(k["source"], k["reason"]) for _, k in calls] == [("http", "wrong_shape"), ("redis", "not_json")]
    assert counter(client, "rejected", source="redis", reason="not_json") == 1
    assert "rejected message from redis channel 'orders': not_json: Expecting value; payload '{not json'" in caplog.text


def test_a_stream_signals_client_connected_and_client_disconnected(app, client):
    relay, connected, disconnected = app.extensions["relay"], [], []
    with signals.client_connected.connected_to(record(connected), sender=relay), \
            signals.client_disconnected.connected_to(record(disconnected), sender=relay):
        response = client.get("/events/a", buffered=False)
        first = next(response.response)
        assert first.startswith(b"retry:")
        assert [(k["channels"], k["clients"]) for _, k in connected] == [(["a"], 1)]
        assert disconnected == []
        response.close()  # the client leaves: the generator ends
    assert [(k["reason"], k["clients"]) for _, k in disconnected] == [("", 0)]


def test_a_failing_sink_signals_delivery_failed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    (tmp_path / "failing_sink.py").write_text(textwrap.dedent("""
        from relay.api import hookimpl

        @hookimpl
        def relay_deliver(relay, event):
            raise RuntimeError("disk full")
    """))
    from relay.app import create_app

    app = create_app({"data_dir": str(tmp_path / "data"), "plugins": ["failing_sink"]})
    relay, calls = app.extensions["relay"], []
    try:
        with signals.delivery_failed.connected_to(record(calls), sender=relay):
            response = app.test_client().post("/events/c", json={"event": "e"})
            assert response.status_code == 202
    finally:
        relay.stop()
    [(_, kwargs)] = calls
    assert (kwargs["plugin"], kwargs["hook"], str(kwargs["error"])) == ("failing_sink", "relay_deliver", "disk full")
    assert kwargs["event"].id == response.get_json()["id"]
    rows = relay.stats.snapshot()["plugin_errors"]
    assert rows == [{"hook": "relay_deliver", "plugin": "failing_sink", "count": 1}]


def test_a_source_state_change_is_signalled_once_and_logged(caplog):
    class Probe(Source):
        name = "probe"

    source, calls = Probe(), []
    with signals.source_state_changed.connected_to(record(calls), sender=source), caplog.at_level(logging.INFO):
        source.set_status("up", "connected")
        source.set_status("up", "still connected")  # no change of state: no signal
        source.set_status("down", "connection refused")
    assert [(k["previous"], k["state"], k["detail"]) for _, k in calls] == [
        ("starting", "up", "connected"), ("up", "down", "connection refused")]
    assert "source probe is down: connection refused" in caplog.text


def test_the_relays_own_receivers_are_removed_when_it_stops(app, client):
    relay = app.extensions["relay"]
    relay.start()
    before = {s.name: len(list(s.receivers_for(relay))) for s in signals.ALL}
    assert before["event-rejected"] == 1 and before["delivery-failed"] == 1
    relay.stop()
    assert all(len(list(s.receivers_for(relay))) == 0 for s in signals.ALL if s.name != "source-state-changed")


@pytest.mark.parametrize("signal", signals.ALL, ids=lambda s: s.name)
def test_signals_have_kebab_case_names_and_docs(signal):
    assert signal.name == signal.name.lower() and "_" not in signal.name and " " not in signal.name
    assert signal.__doc__ and "Keywords" in signal.__doc__
