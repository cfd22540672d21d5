"""The app as a module attribute: what ``relay serve`` runs, from any directory.

By hand: ``gunicorn -c python:relay.gunicorn_config relay.wsgi_app:app``. gunicorn must be given
relay's settings (the gevent worker, ``RELAY_BIND``, the start-up check, the metrics directory,
sources started after fork, gunicorn's own settings handed to the app); it reads
``gunicorn.conf.py`` only from the working directory, so outside a checkout it would run relay
without them. This module refuses that with a message
saying what to run instead.
"""

import sys

from relay.app import create_app

WITHOUT_SETTINGS = (
    "relay: gunicorn was started without relay's settings (it reads gunicorn.conf.py only from the "
    "working directory), so RELAY_BIND, RELAY_WORKERS and relay's worker settings would be ignored. "
    "Run `relay serve` (from any directory), or `gunicorn -c python:relay.gunicorn_config relay.wsgi_app:app`."
)


def _check_gunicorn_settings() -> None:
    """Under gunicorn, fail to load unless relay's gunicorn settings were loaded (the arbiter
    imported relay.gunicorn_config, directly or through gunicorn.conf.py, before forking us).
    Other WSGI servers, and tests importing the app, are left alone."""
    if "gunicorn.arbiter" not in sys.modules or "relay.gunicorn_config" in sys.modules:
        return
    from gunicorn.errors import AppImportError

    # gunicorn prints an AppImportError's message alone and stops ("App failed to load").
    raise AppImportError(WITHOUT_SETTINGS)


def _served_settings() -> dict | None:
    """The ``[server]`` values gunicorn runs this worker with (its -b, -w... included), handed
    over by relay.gunicorn_config's post_fork; ``None`` under another server, or in a test."""
    settings = sys.modules.get("relay.gunicorn_config")
    return settings.served_settings() if settings is not None else None


_check_gunicorn_settings()
app = create_app(server=_served_settings())
