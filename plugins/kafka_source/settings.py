"""The ``[sources.kafka]`` configuration section and the kafka-python settings built from it."""

from __future__ import annotations

import os
import socket
from typing import Any

from relay.api import FORMATS, InvalidEvent, Option, Section, check_name

SECTION = "sources.kafka"

# kafka-python settings passed through from [sources.kafka.security] to every client.
SECURITY_KEYS = {
    "security_protocol": str, "sasl_mechanism": str, "sasl_plain_username": str, "sasl_plain_password": str,
    "sasl_kerberos_name": str, "sasl_kerberos_service_name": str, "sasl_kerberos_domain_name": str,
    "ssl_check_hostname": bool, "ssl_cafile": str, "ssl_certfile": str, "ssl_keyfile": str,
    "ssl_password": str, "ssl_crlfile": str, "ssl_ciphers": str,
}
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")

# Tuning passed through from [sources.kafka.consumer] / [sources.kafka.producer]; relay owns the rest.
CONSUMER_KEYS = {
    "client_id": str, "session_timeout_ms": int, "heartbeat_interval_ms": int, "max_poll_interval_ms": int,
    "request_timeout_ms": int, "retry_backoff_ms": int, "reconnect_backoff_ms": int,
    "reconnect_backoff_max_ms": int, "fetch_max_wait_ms": int, "fetch_min_bytes": int, "fetch_max_bytes": int,
    "max_partition_fetch_bytes": int, "max_poll_records": int, "metadata_max_age_ms": int,
    "connections_max_idle_ms": int, "isolation_level": str, "check_crcs": bool, "client_rack": str,
    "group_instance_id": str, "bootstrap_timeout_ms": int, "allow_auto_create_topics": bool,
}
PRODUCER_KEYS = {
    "client_id": str, "acks": (int, str), "compression_type": str, "retries": int, "request_timeout_ms": int,
    "delivery_timeout_ms": int, "max_block_ms": int, "reconnect_backoff_ms": int, "reconnect_backoff_max_ms": int,
    "metadata_max_age_ms": int, "max_request_size": int, "linger_ms": int, "batch_size": int,
}


def _check_table(allowed: dict[str, Any], choices: dict[str, tuple] | None = None):
    def check(table: dict) -> str | None:
        for key, value in table.items():
            if key not in allowed:
                return f"{key!r} is not passed through; allowed: {', '.join(sorted(allowed))}"
            types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return f"{key} = {value!r}: expected {' or '.join(t.__name__ for t in types)}"
            if choices and key in choices and value not in choices[key]:
                return f"{key} = {value!r}: allowed: {', '.join(choices[key])}"
        return None
    return check


def _check_names(what: str):
    def check(names: list[str]) -> str | None:
        for name in names:
            if not name or any(c in name for c in "\r\n\0 ,"):
                return f"{name!r} is not a valid {what}"
        return None
    return check


def _check_name(field: str):
    def check(value: str) -> str | None:
        if not value:
            return None
        try:
            check_name(field, value)
        except InvalidEvent as exc:
            return str(exc)
        return None
    return check


def _check_channel_map(mapping: dict) -> str | None:
    for topic, channel in mapping.items():
        try:
            check_name("channel", channel)
        except InvalidEvent as exc:
            return f"[{topic!r}] = {channel!r}: {exc}"
    return None


SECTION_SCHEMA = Section(SECTION, (
    Option("bootstrap_servers", list, [], "host:port of Kafka brokers; the source is off while empty",
           env="RELAY_KAFKA_BOOTSTRAP_SERVERS", check=_check_names("host:port")),
    Option("topics", list, [], "topics to relay (every partition of each)", env="RELAY_KAFKA_TOPICS",
           check=_check_names("topic")),
    Option("group_id", str, "", "consumer group for durable delivery to sinks implementing "
           "relay_deliver_durable (webhooks); empty: broadcast only", env="RELAY_KAFKA_GROUP_ID"),
    Option("format", str, "envelope", "record value format: a JSON envelope, or the raw value as data",
           env="RELAY_KAFKA_FORMAT", choices=FORMATS),
    Option("start", str, "latest", "where a worker (and a new consumer group) starts reading",
           env="RELAY_KAFKA_START", choices=("latest", "earliest")),
    Option("event_name", str, "message", "event name given to raw records", env="RELAY_KAFKA_EVENT_NAME",
           check=_check_name("event")),
    Option("channel_map", dict, {}, "topic -> relay channel for records that name none (default: the topic)",
           check=_check_channel_map),
    Option("max_size", int, 65536, "largest record value accepted, in bytes", env="RELAY_KAFKA_MAX_SIZE", min=1),
    Option("dead_letter_topic", str, "", "copy rejected records to this topic (empty: off)",
           env="RELAY_KAFKA_DEAD_LETTER_TOPIC", check=_check_name("topic")),
    Option("replay_timeout", float, 5.0, "seconds a resume may spend reading Kafka", min=0.1),
    Option("replay_concurrency", int, 4, "resumes reading Kafka at once per worker", min=1),
    Option("probe_interval", float, 2.0, "seconds between broker health probes", min=0.1),
    Option("batch_wait_ms", int, 0, "after a poll that brought records but not a full batch, wait this long "
           "before the next, so a trickle of records is read in batches: less CPU at low rates, a longer "
           "latency tail (0: poll again at once)", env="RELAY_KAFKA_BATCH_WAIT_MS", min=0,
           check=lambda ms: f"{ms} ms: at most 1000" if ms > 1000 else None),
    Option("security", dict, {}, "kafka-python security settings (security_protocol, sasl_*, ssl_*)",
           check=_check_table(SECURITY_KEYS, {"security_protocol": SECURITY_PROTOCOLS,
                                              "sasl_mechanism": SASL_MECHANISMS})),
    Option("consumer", dict, {}, "kafka-python consumer tuning (session_timeout_ms, …)",
           check=_check_table(CONSUMER_KEYS)),
    Option("producer", dict, {}, "kafka-python producer tuning for the dead-letter topic",
           check=_check_table(PRODUCER_KEYS)),
), "The Kafka source: broadcast to every worker, and durable group delivery.")


def channel_for(settings: dict, topic: str) -> str:
    return settings["channel_map"].get(topic, topic)


def _client_id(role: str) -> str:
    return f"relay-{role}-{socket.gethostname()}-{os.getpid()}"


def native_crc32c() -> bool:
    """True when kafka-python checks record CRCs in C (the ``crc32c`` package). Its pure-Python
    fallback holds the gevent hub for up to a second per large fetch."""
    try:
        from kafka.record import util
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        return False
    return getattr(util, "crc32c_c", None) is not None


def consumer_config(settings: dict, role: str, group_id: str | None = None) -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` settings. relay decodes records itself: no deserializers,
    so an undecodable key or value never raises inside ``poll`` and never stalls a partition."""
    # Shorter than kafka-python's defaults (30 s): a broker that comes back is used within seconds.
    # read_committed: records of aborted transactions never reach a browser or a webhook.
    config: dict[str, Any] = {"client_id": _client_id(role), "reconnect_backoff_max_ms": 5000,
                              "bootstrap_timeout_ms": 10000, "check_crcs": native_crc32c(),
                              "isolation_level": "read_committed"}
    config.update(settings["consumer"])
    config.update(settings["security"])
    config.update(bootstrap_servers=list(settings["bootstrap_servers"]), group_id=group_id,
                  enable_auto_commit=False, key_deserializer=None, value_deserializer=None)
    # Broadcast readers choose their start explicitly; an out-of-range position (a topic that was
    # recreated, retention) restarts at the earliest record rather than skipping any.
    config["auto_offset_reset"] = settings["start"] if group_id else "earliest"
    return config


def producer_config(settings: dict) -> dict[str, Any]:
    config: dict[str, Any] = {"client_id": _client_id("dead-letter"), "acks": "all"}
    config.update(settings["producer"])
    config.update(settings["security"])
    config["bootstrap_servers"] = list(settings["bootstrap_servers"])
    return config
