"""The example plugins, run by a real relay that found them through their entry points."""

import json

from relay.testing import wait_until


def test_sink_writes_published_events(relay_server_factory, tmp_path):
    out = tmp_path / "out.jsonl"
    server = relay_server_factory({"sinks": {"jsonl": {"path": str(out), "channels": ["demo"]}}})
    server.publish("demo", "emote", {"emote": "dolphin"})
    server.publish("elsewhere", "emote", "not written")
    lines = wait_until(lambda: out.exists() and out.read_text().splitlines(), message="a line in the file")
    assert [json.loads(line)["data"] for line in lines] == [{"emote": "dolphin"}]


def test_source_tails_a_file_and_skips_bad_lines(relay_server_factory, tmp_path):
    incoming = tmp_path / "in.jsonl"
    server = relay_server_factory({"sources": {"jsonl": {"path": str(incoming), "channel": "files"}}})
    wait_until(lambda: server.health()["components"]["source:jsonl"]["state"] == "up")
    with server.sse("/events/files") as stream:
        with open(incoming, "a") as fh:
            fh.write('{"event": "emote", "data": 1}\nnot json\n{"event": "emote", "data": 2}\n')
        assert [e.json() for e in stream.events(2, 5)] == [1, 2]
    rejected = server.health()["counters"]["rejected"]
    assert rejected == [{"reason": "not_json", "source": "jsonl", "count": 1}]
