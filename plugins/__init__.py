"""relay's built-in plugins.

Each module here is an ordinary relay plugin, registered through the ``relay`` entry-point group
in ``setup.cfg`` and using only the public hooks, so any of them can be copied as the start of a
plugin of your own.
"""
