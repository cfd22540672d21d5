"""What happens inside relay, as blinker signals: connect to them, Flask's way.

relay's own metrics and log lines for these happenings are receivers of the same signals
(:mod:`relay.observe`), so a plugin or a test sees exactly what the operator sees::

    from relay.signals import event_rejected

    @event_rejected.connect
    def alert(relay, source, reason, where, error, payload):
        ...

    with event_rejected.connected_to(seen.append):   # in tests
        ...

The sender is the worker's ``Relay`` (a ``Source`` for ``source-state-changed``); receivers get
the keyword arguments listed on each signal. Receivers run in the sending greenlet: keep them
short, never block, and never raise (an exception propagates to the sender). The SSE fan-out of
events to browsers is not a signal: it is the bus (:mod:`relay.bus`), built for that hot path.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

event_published = _signals.signal("event-published", doc="""\
An event went into the backbone with its id. Keywords: ``event``.""")

event_rejected = _signals.signal("event-rejected", doc="""\
A message or request was refused and skipped. Keywords: ``source`` (``"http"``, ``"redis"``,
``"kafka"``, …), ``reason`` (``not_json``, ``too_deep``, …), ``where`` (where it came from, for
logs), ``error`` (text), ``payload`` (an excerpt, or ``None``).""")

client_connected = _signals.signal("client-connected", doc="""\
An SSE client started streaming. Keywords: ``channels``, ``address``, ``clients`` (this worker's
count, this one included).""")

client_disconnected = _signals.signal("client-disconnected", doc="""\
An SSE client left or was disconnected. Keywords: ``channels``, ``address``, ``reason`` (``""``
when it left, ``"slow"``, ``"shutdown"``), ``clients`` (this worker's count without it).""")

source_state_changed = _signals.signal("source-state-changed", doc="""\
A source's health changed (sender: the ``Source``). Keywords: ``state`` (``starting``, ``up``,
``down``), ``previous``, ``detail``.""")

delivery_failed = _signals.signal("delivery-failed", doc="""\
A sink plugin raised or timed out on an event (``relay_deliver``, ``relay_deliver_durable``).
Keywords: ``plugin``, ``hook``, ``event``, ``error`` (the exception).""")

ALL = (event_published, event_rejected, client_connected, client_disconnected, source_state_changed,
       delivery_failed)
