"""The in-process bus: one blinker signal, with the channel name as sender.

Receivers connect to a channel (``subscribe``) and are
called as ``receiver(channel, event=event)``, blinker's own convention. ``send`` calls each
receiver in its own ``try`` so one failing receiver never keeps an event from the others.
"""

from __future__ import annotations

import logging
from typing import Callable

from blinker import Signal

from relay.event import Event

Receiver = Callable[..., None]
log = logging.getLogger("relay.bus")


_CACHED_CHANNELS = 4096  # channels whose receiver lists are kept between two (un)subscriptions


class Bus:
    def __init__(self, on_error: Callable[[Receiver, Exception], None] | None = None):
        # A signal of our own rather than a named one: every app gets a separate bus.
        self.signal = Signal("relay-event")
        self._on_error = on_error
        # Each channel's receivers, as blinker lists them, kept until the next connect or
        # disconnect: fan-out walks a tuple instead of blinker's generator for every event.
        self._receivers: dict[str, tuple[Receiver, ...]] = {}
        self.signal.receiver_connected.connect(self._forget_receivers, weak=False)
        self.signal.receiver_disconnected.connect(self._forget_receivers, weak=False)

    def _forget_receivers(self, *args, **kwargs) -> None:
        self._receivers.clear()

    def subscribe(self, channel: str, receiver: Receiver) -> None:
        self.signal.connect(receiver, sender=channel, weak=False)

    def unsubscribe(self, receiver: Receiver) -> None:
        """Remove ``receiver`` from every channel it was subscribed to."""
        self.signal.disconnect(receiver)

    def send(self, event: Event) -> int:
        """Hand ``event`` to every receiver of its channel; returns how many took it."""
        channel = event.channel
        receivers = self._receivers.get(channel)
        if receivers is None:
            receivers = tuple(self.signal.receivers_for(channel))
            if len(self._receivers) >= _CACHED_CHANNELS:
                self._receivers.clear()
            self._receivers[channel] = receivers
        delivered = 0
        for receiver in receivers:
            try:
                receiver(channel, event=event)
                delivered += 1
            except Exception as exc:  # noqa: BLE001 - isolate receivers from each other
                log.exception("bus receiver %r failed on event %s", receiver, event.id)
                if self._on_error:
                    self._on_error(receiver, exc)
        return delivered

    @property
    def receiver_count(self) -> int:
        return len(self.signal.receivers)
