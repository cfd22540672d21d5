"""relay: events from Redis and Kafka to browsers (Server-Sent Events) and webhooks.

A plugin is a module with functions named after hooks in :mod:`relay.hookspecs`, registered
under the ``relay`` entry-point group of its distribution::

    # my_plugin.py                        # setup.cfg:  [options.entry_points]
    import relay                          #             relay =
                                          #                 shout = my_plugin
    @relay.hookimpl
    def relay_transform_event(event):
        if event.event == "emote":
            return relay.Event(event.channel, "emote", {"loud": event.data}, source=event.source)

    @relay.hookimpl
    def relay_deliver(event):
        print("delivered", event.channel, event.event, event.id)

Run it with ``relay serve``; the app is built by :func:`create_app`. See
docs/writing-plugins.md for a complete source and sink, and docs/hooks.md for every hook.
"""

import pluggy

hookimpl = pluggy.HookimplMarker("relay")

__all__ = ["hookimpl", "create_app", "Event", "InvalidEvent", "Source"]
__version__ = "0.1.0"

# Everything else loads on first use: gunicorn's arbiter imports relay.gunicorn_config, and must
# not import ssl, gevent or prometheus_client before the workers fork and monkey-patch.
_LAZY = {"Event": "relay.event", "InvalidEvent": "relay.event", "Source": "relay.source"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relay' has no attribute {name!r}")


def create_app(config=None):
    """Build the Flask app: see :func:`relay.app.create_app`."""
    from relay.app import create_app as _create_app

    return _create_app(config)
