"""``GET /openapi.json`` describes what relay answers, checked against a real relay.

schemathesis generates requests from the served document for every operation (except the
endless streams) and checks each answer: no 5xx, a documented status, the documented content
type and body shape. Requests schemathesis would not think of (a slow body, a stream over the
per-address limit, a wrong token) are made by hand and checked against the same document. And
every route the app serves must be in it.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.testing import RelayServer, http_request, wait_until

ADMIN_TOKEN = "admin-token-for-the-openapi-test-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JWT_KEY = "jwt-key-for-the-openapi-test-0123456789abcdef"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# A 503 is not a failure where it is documented (readiness, an unreachable tally store, a backbone
# that is down): status_code_conformance still refuses it anywhere else; any other 5xx fails.
SCHEMATHESIS = SchemathesisConfig.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}})
STREAMS = {("GET", "/events/{channel}"), ("GET", "/events")}  # endless: checked by hand below
FRAMING = {"content-length", "transfer-encoding", "host", "connection"}
EXAMPLES = 10  # per operation and generation mode, seeded (derandomize): both modes in about 30 s
EXAMPLES_FIXED = 5  # again with the id of a real webhook endpoint or delivery


HOOK = "http://127.0.0.1:9/hook"  # the discard port: deliveries fail and wait for a retry
API_ENDPOINT = {"id": "ep-openapi", "url": HOOK, "channels": ["openapi-*"]}
CONFIG = {
    "body_timeout": 1.0,
    "max_body_size": 8192,
    # Streams: one per client address (X-Forwarded-For from 127.0.0.1 names it), two per worker.
    "sinks": {"sse": {"max_connections_per_address": 1, "max_connections": 2, "trusted_proxies": ["127.0.0.1"]},
              "webhooks": {"admin_token": ADMIN_TOKEN, "allow_networks": ["127.0.0.0/8"], "retry_schedule": [0, 600],
                           "endpoints": [{"id": "from-config", "url": HOOK, "channels": ["openapi-*"],
                                          "secret": "whsec_" + base64.b64encode(b"k" * 24).decode()}]}},
}


@pytest.fixture(scope="module")
def api_relay(tmp_path_factory):
    """A relay with every built-in route on (the webhook admin API, the demo) and small limits;
    two webhook endpoints (one from the file, one from the API) with a delivery each."""
    server = RelayServer(CONFIG, directory=tmp_path_factory.mktemp("openapi")).start()
    try:
        _ensure_endpoint(server.url)
        server.publish("openapi-x", "e", {"n": 1})
        server.delivery_id = wait_until(lambda: _a_delivery(server.url), message="a webhook delivery")
        yield server
    finally:
        server.stop()


def _ensure_endpoint(url: str) -> None:
    """The endpoint the generated requests may change or delete: there again before each request."""
    status, _, _ = http_request(f"{url}/webhooks/{API_ENDPOINT['id']}", headers=ADMIN)
    if status == 404:
        status, _, body = http_request(f"{url}/webhooks", "POST", json.dumps(API_ENDPOINT).encode(),
                                       {**ADMIN, "Content-Type": "application/json"})
        assert status == 201, body


def _a_delivery(url: str) -> str | None:
    _, _, body = http_request(f"{url}/webhooks/{API_ENDPOINT['id']}/deliveries", headers=ADMIN)
    deliveries = json.loads(body)["deliveries"]
    return deliveries[0]["id"] if deliveries else None


@pytest.fixture(scope="module")
def document(api_relay) -> dict:
    status, headers, body = http_request(f"{api_relay.url}/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def conforms(document: dict, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """Assert that the document lists ``status`` for the operation, with this content type and a
    body matching its schema."""
    operation = document["paths"][path][method.lower()]
    assert str(status) in operation["responses"], f"{method} {path}: {status} is not documented: {body[:300]!r}"
    answer = operation["responses"][str(status)]
    media = content_type.split(";")[0].strip()
    assert media in answer.get("content", {}), f"{method} {path} {status}: {media} is not documented"
    if media == "application/json":
        schema = {**answer["content"][media]["schema"], "components": document["components"]}
        jsonschema_rs.validator_for(schema).validate(json.loads(body))


def _fuzz(schema, server: RelayServer, mode: GenerationMode, headers: dict | None = None) -> list[str]:
    """Run every generated request of ``mode`` against ``server``, with ``headers`` (the admin
    token on the webhook admin API); the failures, by operation.

    Random ids name nothing (404), so operations on one webhook endpoint or delivery also run
    with the ids of real ones: the API's own endpoint, the configuration file's (409 on changes),
    and a delivery.
    """
    failures = []
    # One connection (closed at the end, or the relay's graceful stop waits for it), and the demo's
    # voter cookie (a second vote in a poll is a 409).
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in STREAMS:
                continue
            variants: list[dict] = [{}]
            if "{endpoint_id}" in operation.path:
                variants += [{"endpoint_id": API_ENDPOINT["id"]}, {"endpoint_id": "from-config"}]
            if "{delivery_id}" in operation.path:
                variants += [{"delivery_id": server.delivery_id}]
            for fixed in variants:
                failure = _fuzz_operation(operation, server, mode, fixed, session, headers)
                if failure:
                    failures.append(f"{operation.label} ({mode}, {fixed or 'generated ids'}): {failure}")
    return failures


def _fuzz_operation(operation, server: RelayServer, mode: GenerationMode, fixed: dict, session,
                    headers: dict | None) -> str | None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

    @settings(max_examples=EXAMPLES_FIXED if fixed else EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        # /webhooks/dead-letters is its own operation, not the endpoint "dead-letters".
        assume((case.path_parameters or {}).get("endpoint_id") not in ("dead-letters", "deliveries"))
        for name in list(case.headers or {}):  # negative cases may garble HTTP framing itself: gunicorn
            if name.lower() in FRAMING:        # answers those with its own HTML 400, before relay
                del case.headers[name]
        if fixed.get("endpoint_id") == API_ENDPOINT["id"]:
            _ensure_endpoint(server.url)  # a DELETE may have removed it
        sent = ADMIN if operation.path.startswith("/webhooks") else headers
        case.call_and_validate(base_url=server.url, session=session, headers=sent, checks=CHECKS, timeout=10)

    try:
        run()
    except Unsatisfiable:
        return None  # nothing to make invalid (no parameters, no body): the positive run covers it
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report every operation's failures
        return str(exc)
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_documented_answers(api_relay, document, mode):
    schema = schemathesis.openapi.from_url(f"{api_relay.url}/openapi.json", config=SCHEMATHESIS)
    failures = _fuzz(schema, api_relay, mode)
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in api_relay.log(), api_relay.log()[-3000:]


def test_every_route_is_documented(api_relay, document):
    """Each route and method the app serves is in the document (a new route without a description
    fails here), and the document lists nothing the app does not serve."""
    from relay import create_app
    from relay.openapi import IGNORED_ENDPOINTS, openapi_path

    app = create_app({"sinks": {"webhooks": {"admin_token": ADMIN_TOKEN}},
                      "data_dir": str(api_relay.directory / "inprocess")})
    served = {(openapi_path(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              if rule.endpoint not in IGNORED_ENDPOINTS for method in rule.methods if method not in ("HEAD", "OPTIONS")}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert document["openapi"].startswith("3.1")


def test_document_follows_the_configuration(relay_server_factory):
    """Without admin_token there is no admin API, and disabled plugins' routes are gone."""
    server = relay_server_factory({"disable_plugins": ["demo"]})
    status, _, body = http_request(f"{server.url}/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200
    assert "/events/{channel}" in paths and "/healthz" in paths
    assert not any(path.startswith(("/webhooks", "/demo")) or path == "/" for path in paths), sorted(paths)


def _raw(url: str, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[int, str, bytes]:
    """Send ``head`` (request line and headers) and ``body`` on a raw socket; status, content type, body."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers.get("content-type", ""), rest


def test_streams_and_hand_made_errors_match_the_document(api_relay, document):
    url = api_relay.url
    # A stream: 200 text/event-stream, opening with retry:. (Each from its own address: the limit
    # is one stream per address, and a closed stream may not be noticed before the next opens.)
    for n, (path, template) in enumerate((("/events/openapi", "/events/{channel}"),
                                          ("/events?channel=a&channel=b", "/events"))):
        with api_relay.sse(path, headers={"X-Forwarded-For": f"198.51.100.{n}"}) as stream:
            assert stream.status == 200
            conforms(document, "GET", template, 200, stream.response_headers["content-type"], b"")
            stream.read_some(2)
            assert stream.retry == 3000
    # Refused streams: no channel, a bad name; then over the limits.
    for path, template in (("/events", "/events"), ("/events/a%0Ab", "/events/{channel}")):
        status, headers, body = http_request(f"{url}{path}")
        assert status == 400
        conforms(document, "GET", template, 400, headers["Content-Type"], body)
    if "/channels/{channel}" in document["paths"]:  # with presence, streams take ?presence=1
        assert "presence" in [p["name"] for p in document["paths"]["/events/{channel}"]["get"]["parameters"]]
        with api_relay.sse("/events/openapi?presence=1", headers={"X-Forwarded-For": "198.51.100.9"}) as stream:
            assert stream.status == 200
    wait_until(lambda: api_relay.health()["components"]["sse"]["clients"] == 0, message="streams closed")
    streams = []
    try:  # the second stream from an address: 429; a third stream on the worker: 503
        for address, wanted in (("192.0.2.1", 200), ("192.0.2.1", 429), ("192.0.2.2", 200), ("192.0.2.3", 503)):
            stream = api_relay.sse("/events/limits", headers={"X-Forwarded-For": address})
            streams.append(stream)
            assert stream.status == wanted, address
            if wanted != 200:
                conforms(document, "GET", "/events/{channel}", wanted, stream.response_headers["content-type"],
                         stream.body())
                assert stream.response_headers["retry-after"]
    finally:
        for stream in streams:
            stream.close()
    # Publishing: wrong media type, not JSON, wrong shape, too large, too slow.
    post = "/events/{channel}"
    too_large = b'{"event": "x", "data": "' + b"a" * 9000 + b'"}'  # max_body_size is 8192 here
    for status_wanted, content_type, body in ((415, "text/plain", b"{}"), (400, "application/json", b"{nope"),
                                              (422, "application/json", b'{"data": 1}'),
                                              (413, "application/json", too_large)):
        status, headers, answer = http_request(f"{url}/events/openapi", "POST", body, {"Content-Type": content_type})
        assert status == status_wanted, answer
        conforms(document, "POST", post, status, headers["Content-Type"], answer)
    status, content_type, answer = _raw(url, "POST /events/openapi HTTP/1.1\r\nHost: x\r\n"
                                             "Content-Type: application/json\r\nContent-Length: 100\r\n", b'{"ev')
    assert status == 408
    conforms(document, "POST", post, 408, content_type, answer)
    # The admin API without its token; and a resend naming an endpoint with an object (was a 500).
    status, headers, answer = http_request(f"{url}/webhooks")
    assert status == 401
    conforms(document, "GET", "/webhooks", 401, headers["Content-Type"], answer)
    created = json.dumps({"url": HOOK, "channels": ["x"]}).encode()
    status, headers, answer = http_request(f"{url}/webhooks", "POST", created,
                                           {**ADMIN, "Content-Type": "application/json"})
    assert status == 201, answer  # generated URLs are hardly ever deliverable: one made by hand
    conforms(document, "POST", "/webhooks", 201, headers["Content-Type"], answer)
    status, headers, answer = http_request(f"{url}/webhooks/dead-letters/resend", "POST", b'{"endpoint": {}}',
                                           {**ADMIN, "Content-Type": "application/json"})
    assert status == 422, answer
    conforms(document, "POST", "/webhooks/dead-letters/resend", 422, headers["Content-Type"], answer)
    # Metrics and health.
    for path in ("/metrics", "/healthz", "/readyz", "/openapi.json", "/demo/api/config"):
        status, headers, answer = http_request(f"{url}{path}")
        conforms(document, "GET", path, status, headers["Content-Type"], answer)


def _token(publish: list[str], subscribe: list[str]) -> str:
    import jwt

    return jwt.encode({"relay": {"publish": publish, "subscribe": subscribe}, "exp": int(time.time()) + 600,
                       "sub": "openapi"}, JWT_KEY, algorithm="HS256")


def test_auth_answers_match_the_document(relay_server_factory):
    """401 and 403 as a relay with [auth] answers them, in the document's shape; and the generated
    requests of a token holder whose token covers only some channels (202 or 403, and the demo's
    documented 503 without its tally store, never another 5xx)."""
    # The demo's tallies in a Redis that is not there: its 503.
    server = relay_server_factory({"auth": {"jwt_key": JWT_KEY}, "demo": {"tallies": "redis://127.0.0.1:1/0"}})
    status, _, body = http_request(f"{server.url}/openapi.json")
    document = json.loads(body)
    token = _token(["a*", "room:a*"], ["a*", "room:a*"])
    bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    event = json.dumps({"event": "e"}).encode()
    cases = [
        ("POST", "/events/{channel}", "/events/abc", {"Content-Type": "application/json"}, 401),
        ("POST", "/events/{channel}", "/events/zzz", bearer, 403),
        ("POST", "/events/{channel}", "/events/abc", bearer, 202),
        ("GET", "/events/{channel}", "/events/abc", {}, 401),
        ("GET", "/events", "/events?channel=abc&channel=zzz", bearer, 403),
        ("GET", "/demo/api/rooms/{room}/polls/{poll}", "/demo/api/rooms/lobby/polls/p", {}, 401),
        ("POST", "/demo/api/rooms/{room}/polls/{poll}/votes", "/demo/api/rooms/lobby/polls/p/votes", bearer, 403),
        ("GET", "/demo/api/rooms/{room}/polls/{poll}", "/demo/api/rooms/abc/polls/p", bearer, 503),
    ]
    if "/channels/{channel}" in document["paths"]:
        cases += [("GET", "/channels/{channel}", "/channels/abc", {}, 401),
                  ("GET", "/channels/{channel}", "/channels/zzz", bearer, 403),
                  ("GET", "/channels/{channel}", "/channels/abc", bearer, 200),
                  ("GET", "/channels", "/channels", {}, 200)]  # lists only what the caller may see
    for method, template, path, headers, wanted in cases:
        status, answer_headers, answer = http_request(f"{server.url}{path}", method,
                                                      event if method == "POST" else None, headers)
        assert status == wanted, (method, path, status, answer)
        conforms(document, method, template, status, answer_headers["Content-Type"], answer)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=SCHEMATHESIS)
    failures = _fuzz(schema, server, GenerationMode.POSITIVE, {"Authorization": f"Bearer {token}"})
    assert not failures, "\n\n".join(failures)


def test_publish_rate_limit_answer_matches_the_document(relay_server_factory):
    server = relay_server_factory({"publish": {"rate": 0.001, "burst": 1}})
    status, _, body = http_request(f"{server.url}/openapi.json")
    document = json.loads(body)
    for wanted in (202, 429):  # burst 1: the second one waits
        status, headers, answer = http_request(f"{server.url}/events/a", "POST", b'{"event": "e"}',
                                               {"Content-Type": "application/json"})
        assert status == wanted, answer
        conforms(document, "POST", "/events/{channel}", status, headers["Content-Type"], answer)
    assert int(headers["Retry-After"]) >= 1


def test_the_document_is_valid_openapi_for_schemathesis(document):
    """schemathesis loads it and finds an operation for each documented path and method."""
    schema = schemathesis.openapi.from_dict(document)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert len(labels) == sum(len(item) for item in document["paths"].values())
    assert "POST /events/{channel}" in labels


PROBE_PLUGIN = '''
from flask import jsonify

import relay


@relay.hookimpl
def relay_init_app(app):
    app.add_url_rule("/probe/<name>", "probe", lambda name: jsonify({"name": name}))


@relay.hookimpl
def relay_openapi_paths():
    return {
        "/probe/<name>": {"get": {"parameters": [{"name": "name", "in": "path", "required": True,
                                                  "schema": {"type": "string"}}],
                                  "responses": {"200": {"description": "the name"}}},
                          "delete": {"responses": {"204": {"description": "not served: left out"}}}},
        "/not-served": {"get": {"responses": {"200": {"description": "left out"}}}},
    }
'''


def test_plugins_describe_their_routes(tmp_path, monkeypatch):
    """relay_openapi_paths adds a plugin's operations, but only those the app really serves."""
    from relay import create_app

    (tmp_path / "openapi_probe.py").write_text(PROBE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = create_app({"plugins": ["openapi_probe"], "data_dir": str(tmp_path / "data")})
    try:
        paths = app.test_client().get("/openapi.json").get_json()["paths"]
        assert list(paths["/probe/{name}"]) == ["get"]
        assert "/not-served" not in paths
        assert "/events/{channel}" in paths
    finally:
        app.extensions["relay"].stop()  # the first request started its sources
