"""A durable sink for the Kafka tests: loaded with ``RELAY_PLUGINS=kafka_durable_sink``.

``relay_deliver_durable`` appends one JSON line per event to ``KAFKA_TEST_SINK_FILE`` and fsyncs
before returning (it has then taken responsibility). It waits ``KAFKA_TEST_SINK_DELAY`` seconds
first (to keep a test mid-stream), and refuses (raises) while the file named by
``KAFKA_TEST_SINK_REFUSE`` exists. ``relay_deliver`` appends to ``KAFKA_TEST_SINK_PLAIN_FILE``:
it shows which events came through the non-durable path.
"""

import json
import os

import gevent

from relay import hookimpl


def _append(path: str, event) -> None:
    line = json.dumps({"id": event.id, "channel": event.channel, "data": event.data, "source": event.source,
                       "pid": os.getpid()})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@hookimpl
def relay_deliver_durable(event):
    delay = float(os.environ.get("KAFKA_TEST_SINK_DELAY", "0"))
    if delay:
        gevent.sleep(delay)
    switch = os.environ.get("KAFKA_TEST_SINK_REFUSE")
    if switch and os.path.exists(switch):
        raise RuntimeError("the test sink refuses events while its switch file exists")
    _append(os.environ["KAFKA_TEST_SINK_FILE"], event)


@hookimpl
def relay_deliver(event):
    path = os.environ.get("KAFKA_TEST_SINK_PLAIN_FILE")
    if path:
        _append(path, event)
