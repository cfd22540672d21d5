"""The base class for sources: something that brings events in from outside."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent.event

from relay import observe  # noqa: F401 - its receivers log state changes and set the source_up gauge
from relay import signals

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay


class Source:
    """Subclass, set ``name`` and implement :meth:`run`.

    ``run`` connects, publishes events with ``relay.publish(event)`` and returns when
    :attr:`stopping` is set. If it raises, relay logs the error, marks the source down and calls
    ``run`` again after a capped exponential backoff. Call :meth:`set_status` so ``/healthz``
    tells the truth, and wait with ``self.stopping.wait(seconds)`` so shutdown is prompt.
    """

    name = "source"

    def __init__(self) -> None:
        self.stopping = gevent.event.Event()
        self.status = "starting"
        self.detail = ""
        self.log = logging.getLogger(f"relay.source.{self.name}")

    def run(self, relay: Relay) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask :meth:`run` to return. Override to also close a blocking connection."""
        self.stopping.set()

    def set_status(self, status: str, detail: str = "") -> None:
        previous = self.status
        self.status, self.detail = status, detail
        if status != previous:
            signals.source_state_changed.send(self, state=status, previous=previous, detail=detail)
