"""The in-process bus: one blinker signal, with the channel name as sender.

Receivers connect to one channel (``subscribe``) or to every channel (``subscribe_all``) and are
called as ``receiver(channel, event=event)``, blinker's own convention. ``send`` calls each
receiver in its own ``try`` so one failing receiver never keeps an event from the others.
"""

from __future__ import annotations

import logging
from typing import Callable

from blinker import ANY, Signal

from relay.event import Event

Receiver = Callable[..., None]
log = logging.getLogger("relay.bus")


class Bus:
    def __init__(self, on_error: Callable[[Receiver, Exception], None] | None = None):
        # A signal of our own rather than a named one: every app gets a separate bus.
        self.signal = Signal("relay-event")
        self._on_error = on_error

    def subscribe(self, channel: str, receiver: Receiver) -> None:
        self.signal.connect(receiver, sender=channel, weak=False)

    def subscribe_all(self, receiver: Receiver) -> None:
        self.signal.connect(receiver, sender=ANY, weak=False)

    def unsubscribe(self, receiver: Receiver) -> None:
        """Remove ``receiver`` from every channel it was subscribed to."""
        self.signal.disconnect(receiver)

    def send(self, event: Event) -> int:
        """Hand ``event`` to every receiver of its channel; returns how many took it."""
        delivered = 0
        for receiver in self.signal.receivers_for(event.channel):
            try:
                receiver(event.channel, event=event)
                delivered += 1
            except Exception as exc:  # noqa: BLE001 - isolate receivers from each other
                log.exception("bus receiver %r failed on event %s", receiver, event.id)
                if self._on_error:
                    self._on_error(receiver, exc)
        return delivered

    @property
    def receiver_count(self) -> int:
        return len(self.signal.receivers)
