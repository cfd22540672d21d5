"""relay's built-in plugins.

Each module here is an ordinary relay plugin, registered through the ``relay`` entry-point group
in ``setup.cfg`` and using only the public hooks and ``relay.api`` (tests/test_plugin_api.py checks
the imports), so any of them can be copied as the start of a plugin of your own. The one
exception is ``redis_common``: plumbing the Redis plugins share (connections, reconnecting),
not a plugin.
"""
