"""A fast webhook receiver for the Kafka benchmark: verifies and counts signed deliveries.

    python -m benchmarks.webhook_receiver PORT SECRET

One gevent WSGI server (``gevent.pywsgi``, HTTP/1.1 keep-alive) on 127.0.0.1:PORT. Every
``POST`` is checked as a Standard Webhooks receiver would (HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}`` with the secret's key, any of the space-separated
``v1,`` signatures may match) and answered 204; a bad signature is answered 400 and counted.
``GET /stats`` answers the counts as JSON: verified, bad, unique webhook-ids, first and last
verified delivery (``time.time()``).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

# Imported after monkey-patching, as gevent requires.
import base64
import hashlib
import hmac
import json
import sys
import time

from gevent.pywsgi import WSGIServer


def make_app(secret: str):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    stats = {"verified": 0, "bad": 0, "first": 0.0, "last": 0.0}
    ids: set[str] = set()

    def verified(environ, body: bytes) -> bool:
        msg_id = environ.get("HTTP_WEBHOOK_ID", "")
        stamp = environ.get("HTTP_WEBHOOK_TIMESTAMP", "")
        expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
        return any(hmac.compare_digest(expected, sig.partition(",")[2].encode())
                   for sig in environ.get("HTTP_WEBHOOK_SIGNATURE", "").split())

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET":
            body = json.dumps(stats | {"unique": len(ids)}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        body = environ["wsgi.input"].read()
        if not verified(environ, body):
            stats["bad"] += 1
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        now = time.time()
        stats["verified"] += 1
        stats["first"] = stats["first"] or now
        stats["last"] = now
        ids.add(environ["HTTP_WEBHOOK_ID"])
        start_response("204 No Content", [])
        return [b""]

    return app


def main(argv=None) -> int:
    port, secret = (argv or sys.argv[1:])[:2]
    WSGIServer(("127.0.0.1", int(port)), make_app(secret), log=None, error_log=sys.stderr).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
