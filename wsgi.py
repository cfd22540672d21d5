"""The WSGI entry point: ``gunicorn -k gevent wsgi:app`` (settings in gunicorn.conf.py)."""

from relay.wsgi_app import app  # noqa: F401
