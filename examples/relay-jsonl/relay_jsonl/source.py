"""A source: tail a JSON-lines file; each line is an envelope {"event", "data", "channel"?, "id"?}.

    [sources.jsonl]
    path = "incoming.jsonl"
    channel = "files"      # for lines that name no channel
"""

from relay.api import BadMessage, Option, Section, Source, decode, hookimpl, reject


class TailSource(Source):
    name = "jsonl"

    def __init__(self, path, channel, poll):
        super().__init__()
        self.path, self.channel, self.poll = path, channel, poll

    def run(self, relay):
        with open(self.path, "a+", encoding="utf-8") as fh:  # created if missing; read from its end
            self.set_status("up", self.path)
            partial, number = "", 0
            while not self.stopping.is_set():
                line = fh.readline()
                if not line.endswith("\n"):  # nothing new, or a line still being written
                    partial += line
                    self.stopping.wait(self.poll)
                    continue
                line, partial, number = partial + line, "", number + 1
                try:
                    relay.publish(decode(line.strip(), channel=self.channel, source=self.name))
                except BadMessage as error:  # counted and logged; the next line goes on
                    reject(relay, self.name, f"{self.path}:{number}", line, error)


@hookimpl
def relay_config_sections():
    return [Section("sources.jsonl", (
        Option("path", str, "", "file to tail; empty: the source is off", env="RELAY_JSONL_SOURCE_PATH"),
        Option("channel", str, "files", "channel for lines that name none"),
        Option("poll", float, 0.1, "seconds between looks at the file", min=0.01),
    ), "Tail a JSON-lines file of envelopes.")]


@hookimpl
def relay_sources(relay):
    settings = relay.config.section("sources.jsonl")
    return [TailSource(settings["path"], settings["channel"], settings["poll"])] if settings["path"] else []
