"""Bounded calls into kafka-python, safe in a gevent worker.

kafka-python 3 runs its network I/O in a thread, a greenlet under gevent's monkey-patching;
every call here waits cooperatively and for a bounded time, so a broker that is down makes a
call fail after a few seconds instead of holding the source (or the hub) forever.
"""

from __future__ import annotations

from typing import Any

import gevent

CALL_TIMEOUT = 5.0  # seconds for metadata and offset look-ups


class BrokerUnavailable(Exception):
    """The broker did not answer in time."""


def reachable(servers: list[str], timeout: float = 3.0) -> None:
    """Raise :class:`BrokerUnavailable` unless a bootstrap server accepts a TCP connection.

    Checked before building a client: kafka-python's constructor waits for its bootstrap (up to
    ``bootstrap_timeout_ms``), and the source should say it is down at once instead.
    """
    import socket

    errors = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout).close()
            return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise BrokerUnavailable("no bootstrap server accepts connections: " + "; ".join(errors))


def build(factory: Any, config: dict, source: Any = None, grace: float = 2.0) -> Any:
    """Build a kafka-python client, which bootstraps in its constructor.

    The constructor runs in a greenlet of its own: when it has not finished within
    ``bootstrap_timeout_ms`` plus ``grace`` (a TLS or SASL handshake the server never answers
    can outlast kafka-python's own timeout), ``source`` is reported down while the wait goes on,
    so a stuck start is visible in ``/healthz`` without abandoning a half-built client. Returns
    ``None`` if the source is stopped meanwhile.
    """
    from kafka.errors import KafkaError

    builder = gevent.spawn(factory, **config)
    limit = config.get("bootstrap_timeout_ms", 30000) / 1000 + grace
    builder.join(limit)
    while not builder.ready():
        if source is None:
            builder.kill(block=False)
            raise BrokerUnavailable(f"no answer from the brokers within {limit:g}s while connecting")
        source.set_status("down", f"no answer from the brokers within {limit:g}s while connecting "
                                  "(unreachable, or security settings the brokers do not speak)")
        if source.stopping.wait(1.0):
            builder.kill(block=True, timeout=2)
            return None
        builder.join(0)
    if not builder.successful():
        exc = builder.exception
        if isinstance(exc, KafkaError):
            raise BrokerUnavailable(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        raise exc
    return builder.value


def bootstrap(consumer: Any, timeout: float = CALL_TIMEOUT) -> None:
    """Wait until the consumer has cluster metadata; :class:`BrokerUnavailable` otherwise."""
    from kafka.errors import KafkaError

    try:
        with gevent.Timeout(timeout + 1, BrokerUnavailable(f"no answer from the brokers within {timeout:g}s")):
            consumer.bootstrap(timeout_ms=int(timeout * 1000))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach the brokers: {type(exc).__name__}: {exc}") from None


def partitions(consumer: Any, topics: list[str], timeout: float = CALL_TIMEOUT) -> list[Any]:
    """Every partition of ``topics`` that exists now, as ``TopicPartition``s."""
    from kafka import TopicPartition

    found = []
    with gevent.Timeout(timeout, BrokerUnavailable(f"no topic metadata within {timeout:g}s")):
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                found.append(TopicPartition(topic, partition))
    return found


def end_offsets(consumer: Any, tps: list[Any], timeout: float = CALL_TIMEOUT) -> dict[Any, int]:
    """The log-end offsets of ``tps`` (the last stable ones, read_committed): also the source's
    health probe."""
    return _offsets(consumer.end_offsets, tps, timeout)


def beginning_offsets(consumer: Any, tps: list[Any], timeout: float = CALL_TIMEOUT) -> dict[Any, int]:
    return _offsets(consumer.beginning_offsets, tps, timeout)


def _offsets(ask: Any, tps: list[Any], timeout: float) -> dict[Any, int]:
    from kafka.errors import KafkaError

    if not tps:
        return {}
    try:
        with gevent.Timeout(timeout + 1, BrokerUnavailable(f"no offsets within {timeout:g}s")):
            return ask(tps, timeout_ms=int(timeout * 1000))
    except KafkaError as exc:
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None


def close(consumer: Any, log: Any, timeout: float = 2.0) -> None:
    """Close without committing, bounded; a failure is logged, never raised."""
    try:
        with gevent.Timeout(timeout + 1):
            consumer.close(autocommit=False, timeout_ms=int(timeout * 1000))
    except gevent.Timeout:
        log.warning("closing a Kafka consumer took longer than %.0fs; abandoned", timeout)
    except Exception:  # noqa: BLE001 - closing on the way out
        log.warning("closing a Kafka consumer failed", exc_info=True)
