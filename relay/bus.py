"""The in-process bus: one blinker signal, with the channel name as sender.

Receivers connect to a channel (``subscribe``) and are
called as ``receiver(channel, event=event)``, blinker's own convention. ``send`` calls each
receiver in its own ``try`` so one failing receiver never keeps an event from the others.

A source that reads many events at once (a Kafka poll) hands them over with ``send_batch``: a
receiver subscribed with a ``batch`` function takes each channel's run of events in one call
(an SSE stream: one queue extend and one wake-up instead of one per event); the others are
called once per event, as by ``send``.

A backbone that routes channels (only the channels some receiver of this worker wants reach the
worker) watches :attr:`Bus.channel_wanted` and :attr:`Bus.channel_unwanted`: the bus counts each
channel's receivers and signals the first one in and the last one out. A sink with no receiver
of its own asks for a channel with :meth:`Bus.want` and gives it back with :meth:`Bus.unwant`.
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
        self._batch: dict[Receiver, Callable[[str, list[Event]], None]] = {}  # receiver -> its batch form
        self.signal.receiver_connected.connect(self._forget_receivers, weak=False)
        self.signal.receiver_disconnected.connect(self._forget_receivers, weak=False)
        #: Sent as ``receiver(channel)`` when ``channel`` gets its first receiver (or ``want``).
        self.channel_wanted = Signal("channel-wanted")
        #: Sent as ``receiver(channel)`` when ``channel`` loses its last receiver (and ``want``).
        self.channel_unwanted = Signal("channel-unwanted")
        self._wants: dict[str, int] = {}  # channel -> receivers and wants holding it
        self._channels_of: dict[Receiver, set[str]] = {}  # receiver -> the channels it holds

    def _forget_receivers(self, *args, **kwargs) -> None:
        self._receivers.clear()

    def subscribe(self, channel: str, receiver: Receiver,
                  batch: Callable[[str, list[Event]], None] | None = None) -> None:
        """Call ``receiver(channel, event=event)`` for every event of ``channel``.

        :param batch: ``batch(channel, events)``, taking a run of events of ``channel`` at once,
            in order; ``send_batch`` calls it instead of ``receiver``. It must do what calling
            ``receiver`` for each event would do.
        """
        if batch is not None:
            self._batch[receiver] = batch
        self.signal.connect(receiver, sender=channel, weak=False)
        held = self._channels_of.setdefault(receiver, set())
        if channel not in held:
            held.add(channel)
            self.want(channel)

    def unsubscribe(self, receiver: Receiver) -> None:
        """Remove ``receiver`` from every channel it was subscribed to."""
        self.signal.disconnect(receiver)
        self._batch.pop(receiver, None)
        for channel in self._channels_of.pop(receiver, ()):
            self.unwant(channel)

    def want(self, channel: str) -> None:
        """Hold ``channel`` as wanted in this worker without a receiver (a sink that reads it
        another way); each ``want`` is given back by one :meth:`unwant`. The first holder of a
        channel sends :attr:`channel_wanted`."""
        held = self._wants.get(channel, 0)
        self._wants[channel] = held + 1
        if not held:
            self._announce(self.channel_wanted, channel)

    def unwant(self, channel: str) -> None:
        """Give back one :meth:`want`; the last holder of a channel sends :attr:`channel_unwanted`."""
        held = self._wants.get(channel, 0)
        if held > 1:
            self._wants[channel] = held - 1
        elif held == 1:
            del self._wants[channel]
            self._announce(self.channel_unwanted, channel)

    def wanted(self) -> list[str]:
        """The channels some receiver (or :meth:`want`) of this worker holds now."""
        return list(self._wants)

    def _announce(self, signal: Signal, channel: str) -> None:
        try:
            signal.send(channel)
        except Exception:  # a routing failure must not cost the subscriber its stream
            log.exception("bus: a receiver of %s failed for channel %r", signal.__doc__, channel)

    def _receivers_of(self, channel: str) -> tuple[Receiver, ...]:
        receivers = self._receivers.get(channel)
        if receivers is None:
            receivers = tuple(self.signal.receivers_for(channel))
            if len(self._receivers) >= _CACHED_CHANNELS:
                self._receivers.clear()
            self._receivers[channel] = receivers
        return receivers

    def send(self, event: Event) -> int:
        """Hand ``event`` to every receiver of its channel; returns how many took it."""
        channel = event.channel
        delivered = 0
        for receiver in self._receivers_of(channel):
            try:
                receiver(channel, event=event)
                delivered += 1
            except Exception as exc:  # noqa: BLE001 - isolate receivers from each other
                self._failed(receiver, exc, event)
        return delivered

    def send_batch(self, events: list[Event]) -> int:
        """Hand each event, in order, to the receivers of its channel; returns the deliveries
        made (events times receivers that took them)."""
        delivered, start, end = 0, 0, len(events)
        while start < end:
            channel = events[start].channel
            stop = start + 1
            while stop < end and events[stop].channel == channel:
                stop += 1
            run = events if stop - start == end else events[start:stop]
            for receiver in self._receivers_of(channel):
                batch = self._batch.get(receiver)
                if batch is not None:
                    try:
                        batch(channel, run)
                        delivered += len(run)
                    except Exception as exc:  # noqa: BLE001 - isolate receivers from each other
                        self._failed(receiver, exc, run[0])
                    continue
                for event in run:
                    try:
                        receiver(channel, event=event)
                        delivered += 1
                    except Exception as exc:  # noqa: BLE001 - isolate receivers from each other
                        self._failed(receiver, exc, event)
            start = stop
        return delivered

    def _failed(self, receiver: Receiver, exc: Exception, event: Event) -> None:
        log.error("bus receiver %r failed on event %s", receiver, event.id, exc_info=exc)
        if self._on_error:
            self._on_error(receiver, exc)

    @property
    def receiver_count(self) -> int:
        return len(self.signal.receivers)
