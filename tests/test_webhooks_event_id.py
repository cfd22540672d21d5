"""Issue 17 point 7: a webhook body carries relay's event id (``"id"``), the SSE ``id:`` of the same
event, so a receiver can match a delivery with what browsers saw. A real relay under gunicorn
delivers to a real receiver on loopback; every body is verified with ``standardwebhooks``."""

from __future__ import annotations

import pytest
from webhook_support import SECRET, Reply, endpoint, webhook_config

pytest_plugins = ["webhook_fixtures"]  # receiver
pytestmark = pytest.mark.timeout(60)


def test_the_webhook_body_id_is_the_sse_event_id(relay_server_factory, receiver):
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")]))
    with server.sse("/events/demo") as stream:
        assigned = server.publish("demo", "emote", {"n": 1})  # relay assigns the id
        chosen = server.publish("demo", "order", {"n": 2}, id="order-42")  # the publisher chose it
        seen = stream.events(2, timeout=10)
    assert [e.id for e in seen] == [assigned["id"], "order-42"]
    got = sorted(receiver.wait_for(2), key=lambda r: r.verify(SECRET)["data"]["n"])
    bodies = [r.verify(SECRET) for r in got]
    assert [b["id"] for b in bodies] == [seen[0].id, seen[1].id] == [assigned["id"], chosen["id"]]
    assert [b["type"] for b in bodies] == ["emote", "order"]
    assert got[0].id != bodies[0]["id"], "webhook-id is the delivery's, the body's id is the event's"


def test_the_id_is_in_the_stored_body_sent_on_every_attempt(relay_server_factory, receiver):
    """The body is built once with the id and stored: a retry sends the same (signed) bytes."""
    receiver.script = [Reply(500), Reply(200)]
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")], retry_schedule=[0, 0.2]))
    published = server.publish("demo", "order", {"n": 1})
    first, second = receiver.wait_for(2)
    assert first.body == second.body
    assert second.verify(SECRET)["id"] == published["id"]
