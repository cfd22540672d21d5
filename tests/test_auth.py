"""JWT authorisation over real HTTP: 401 for unusable tokens, 403 for tokens that don't cover a channel."""

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.testing import RelayServer, http_request

KEY = "a-long-random-secret-for-tests-only-0123456789"


def token(claim=None, key=KEY, algorithm="HS256", exp=300, **extra):
    payload = {"relay": claim if claim is not None else {"publish": ["demo"], "subscribe": ["demo", "room:*"]},
               "exp": int(time.time()) + exp, **extra}
    return jwt.encode(payload, key, algorithm=algorithm)


def post(server, channel, headers=None, query=""):
    status, _, body = http_request(f"{server.url}/events/{channel}{query}", "POST",
                                   b'{"event":"emote","data":1}', {"Content-Type": "application/json", **(headers or {})})
    return status, json.loads(body)


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    server = RelayServer({"auth": {"jwt_key": KEY, "public_channels": ["demo-public", "lobby:*"]}},
                         directory=tmp_path_factory.mktemp("auth")).start()
    yield server
    server.stop()


def test_subscribe_only_token_gets_403_on_publish_and_a_stream_on_get(secured):
    reader = token({"subscribe": ["demo"]})
    status, body = post(secured, "demo", bearer(reader))
    assert status == 403 and "may not publish to 'demo'" in body["message"]
    with secured.sse(f"/events/demo?access_token={reader}") as stream:
        assert stream.status == 200
        assert post(secured, "demo", bearer(token()))[0] == 202
        assert stream.next_event(5).event == "emote"


def test_token_in_cookie_or_header_for_streams(secured):
    reader = token({"subscribe": ["room:*"]})
    with secured.sse("/events/room:1", headers={"Cookie": f"relay_token={reader}"}) as stream:
        assert stream.status == 200
    with secured.sse("/events/room:2", headers=bearer(reader)) as stream:
        assert stream.status == 200
    with secured.sse("/events?channel=room:1&channel=demo", headers=bearer(reader)) as stream:
        assert stream.status == 403 and "'demo'" in json.loads(stream.body())["message"]


@pytest.mark.parametrize("bad,message", [
    (None, "a token is required to publish"),
    ("not.a.token", "the token is malformed"),
    (token(key="someone-elses-secret-key-0123456789abcdef"), "signature is invalid"),
    (token(exp=-60), "the token has expired"),
    (jwt.encode({"relay": {"publish": ["demo"]}}, KEY, algorithm="HS256"), "missing the 'exp' claim"),
    (token(claim={"publish": "demo"}), 'no valid "relay" claim'),
])
def test_unusable_tokens_get_401_saying_why(secured, bad, message):
    status, body = post(secured, "demo", bearer(bad) if bad else {})
    assert status == 401 and message in body["message"], body
    assert body["error"] == "unauthorized"


def test_private_channel_needs_a_token_public_ones_do_not(secured):
    with secured.sse("/events/private") as stream:
        assert stream.status == 401 and "a token is required to subscribe" in json.loads(stream.body())["message"]
    with secured.sse("/events/demo-public") as stream:
        assert stream.status == 200
    with secured.sse("/events?channel=lobby:a&channel=demo-public") as stream:
        assert stream.status == 200
    with secured.sse("/events/demo-public?access_token=garbage") as stream:
        assert stream.status == 401  # a bad token is refused, not ignored
    # public channels are readable, never writable, without a token
    assert post(secured, "demo-public")[0] == 401


def test_rs256_public_key_and_no_algorithm_confusion(relay_server_factory, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "public.pem").write_text(pem)
    server = relay_server_factory({"auth": {"jwt_public_key": str(tmp_path / "public.pem")}})
    good = token(key=private, algorithm="RS256")
    assert post(server, "demo", bearer(good))[0] == 202
    forged = jwt.encode({"relay": {"publish": ["demo"]}, "exp": int(time.time()) + 60},
                        "x" * 64, algorithm="HS256")  # an HS256 token must never pass an RS256 relay
    status, body = post(server, "demo", bearer(forged))
    assert status == 401 and "not signed with RS256" in body["message"]


def test_bad_public_key_stops_start_up(tmp_path):
    server = RelayServer({"auth": {"jwt_public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}},
                         directory=tmp_path)
    with pytest.raises(RuntimeError, match="auth.jwt_public_key: is not an RSA public key"):
        server.start()


def test_open_publishing_on_a_public_address_refuses_to_start(tmp_path):
    exposed = RelayServer(directory=tmp_path / "a")
    exposed.env["RELAY_BIND"] = f"0.0.0.0:{exposed.port}"
    with pytest.raises(RuntimeError, match="publishing open to anyone"):
        exposed.start()
    opted_in = RelayServer({"auth": {"allow_anonymous_publish": True}}, directory=tmp_path / "b")
    opted_in.env["RELAY_BIND"] = f"0.0.0.0:{opted_in.port}"
    try:
        opted_in.start()
        assert opted_in.publish("demo", "emote", 1)["id"]
    finally:
        opted_in.stop()
