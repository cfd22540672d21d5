"""The WSGI entry point in a checkout: ``gunicorn -k gevent wsgi:app`` (settings in gunicorn.conf.py).

gunicorn reads gunicorn.conf.py only from the checkout's top directory. This module is also
installed (``py_modules``), so ``gunicorn -k gevent wsgi:app`` elsewhere finds it and stops with a
message saying what to run instead: ``relay serve``, or
``gunicorn -c python:relay.gunicorn_config relay.wsgi_app:app``.
"""

from relay.wsgi_app import app  # noqa: F401
