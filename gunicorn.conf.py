"""gunicorn settings for relay; gunicorn reads this file from the working directory by itself.

The settings live in relay.gunicorn_config so ``relay serve`` and the test harness use the same
ones from an installed relay, in any directory
(``gunicorn -c python:relay.gunicorn_config relay.wsgi_app:app``).
"""

from relay.gunicorn_config import *  # noqa: F401,F403
