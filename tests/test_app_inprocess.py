"""Route-level checks in-process, with Flask's test client (the ``app``/``client`` fixtures)."""

from relay.event import Event


def test_healthz_reports_every_component(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert {"time", "components", "bus", "backbone", "counters"} <= set(body)
    assert body["components"]["sse"]["state"] == "up"
    assert body["components"]["source:presence"]["plugin"] == "presence"


def test_publish_answers_202_and_the_event_reaches_the_bus(app, client):
    relay = app.extensions["relay"]
    got = []
    relay.bus.subscribe("demo", lambda channel, event: got.append(event))
    response = client.post("/events/demo", json={"event": "emote", "data": {"emote": "dolphin"}})
    assert response.status_code == 202
    body = response.get_json()
    assert body["channel"] == "demo" and body["id"]
    assert [(e.id, e.event, e.data) for e in got] == [(body["id"], "emote", {"emote": "dolphin"})]
    assert isinstance(got[0], Event) and got[0].source == "http"


def test_publish_refuses_a_non_json_content_type_with_415(app, client):
    relay = app.extensions["relay"]
    got = []
    relay.bus.subscribe("demo", lambda channel, event: got.append(event))
    response = client.post("/events/demo", data='{"event": "x"}', content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"] == "unsupported_media_type"
    assert got == []


def test_publish_refuses_a_missing_event_with_422_naming_the_field(app, client):
    relay = app.extensions["relay"]
    got = []
    relay.bus.subscribe("demo", lambda channel, event: got.append(event))
    response = client.post("/events/demo", json={"data": 1})
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "invalid_event" and body["message"].startswith("event:")
    assert got == []
    assert client.get("/healthz").get_json()["counters"]["rejected"]


def test_openapi_describes_the_routes_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    assert {"/healthz", "/openapi.json", "/events/{channel}"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/events/{channel}"]
