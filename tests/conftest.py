"""Fixtures shared across test modules; relay's own (relay_server_factory, …) come from relay.testing."""

pytest_plugins = ["redis_support", "kafka_support", "browser_support"]
