"""Fixtures of the webhook tests; a test module uses them with ``pytest_plugins = ["webhook_fixtures"]``
(a module of its own, imported by pytest only, so that pytest rewrites its asserts)."""

from __future__ import annotations

import pytest
from webhook_support import Receiver


@pytest.fixture
def receiver():
    """A :class:`~webhook_support.Receiver` listening on a free port for the test."""
    receiver = Receiver().start()
    yield receiver
    receiver.stop()
