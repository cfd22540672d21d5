"""A sink: append every event on matching channels to a JSON-lines file.

    [sinks.jsonl]
    path = "events.jsonl"
    channels = ["demo", "room:*"]
"""

import fnmatch
import json

from relay.api import Option, Section, hookimpl


@hookimpl
def relay_config_sections():
    return [Section("sinks.jsonl", (
        Option("path", str, "", "file to append events to; empty: the sink is off", env="RELAY_JSONL_SINK_PATH"),
        Option("channels", list, ["*"], "channel globs to write"),
    ), "Append events to a JSON-lines file.")]


@hookimpl
def relay_deliver(relay, event):
    settings = relay.config.section("sinks.jsonl")
    if not settings["path"] or not any(fnmatch.fnmatchcase(event.channel, g) for g in settings["channels"]):
        return
    line = json.dumps({"id": event.id, "channel": event.channel, "event": event.event, "data": event.data})
    with open(settings["path"], "a", encoding="utf-8") as fh:  # small local writes: fine to do inline
        fh.write(line + "\n")
