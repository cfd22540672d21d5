"""gunicorn settings for relay; gunicorn reads this file from the working directory by itself.

The settings live in relay.gunicorn_config so ``relay serve`` and the test harness use the same
ones from an installed relay.
"""

from relay.gunicorn_config import *  # noqa: F401,F403
