"""The Flask-SSE peer, set up as Flask-SSE's documentation says (quickstart), nothing tuned.

    REDIS_URL=redis://127.0.0.1:6379 gunicorn flask_sse_app:app --worker-class gevent --bind 127.0.0.1:8002

Streams: ``GET /stream?channel=bench``. Flask-SSE opens one Redis pub/sub connection per client
and expects messages on the Redis channel as ``{"data": …, "type": "<event name>"}`` (what its
``sse.publish`` writes); the benchmark publishes exactly that with ``PUBLISH``.
"""

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://localhost")
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/ready")
def ready():
    return "ok"
