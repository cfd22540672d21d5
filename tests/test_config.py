"""Configuration: validated at start-up, every error names the key, the value and what is allowed."""

import subprocess
import sys

import pytest

from relay import create_app
from relay.config import ConfigError
from relay.testing import RelayServer


def problems(config=None, monkeypatch=None, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        create_app(config)
    return "\n".join(info.value.problems)


def test_defaults_need_no_configuration(monkeypatch):
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    app = create_app()
    settings = app.extensions["relay"].config
    assert settings.section("")["backbone"] == "memory"
    assert settings.section("sinks.sse")["heartbeat"] == 15.0


def test_typo_in_a_key_is_named_with_a_suggestion(monkeypatch):
    text = problems({"sinks": {"sse": {"hartbeat": 5}}}, monkeypatch)
    assert "sinks.sse.hartbeat: unknown key (did you mean 'heartbeat'?)" in text


def test_unknown_section_is_named(monkeypatch):
    text = problems({"sources": {"mqtt": {"url": "x"}}}, monkeypatch)
    assert "[sources.mqtt]: unknown section" in text


def test_wrong_type_names_key_value_and_type(monkeypatch):
    text = problems({"history_size": "lots"}, monkeypatch)
    assert "history_size: expected an integer, got 'lots'" in text


def test_bad_value_names_what_is_allowed(monkeypatch):
    text = problems({"sinks": {"sse": {"heartbeat": 0}}}, monkeypatch)
    assert "sinks.sse.heartbeat: 0 is too small" in text and "allowed: 0.05 or more" in text
    text = problems({"log_level": "loud"}, monkeypatch)
    assert "log_level: 'loud' is not allowed" in text and "'debug'" in text


def test_all_problems_are_reported_at_once(monkeypatch):
    error = problems({"history_size": -1, "cors_origins": ["example.com"], "nope": 1}, monkeypatch)
    assert "history_size" in error and "cors_origins" in error and "nope: unknown key" in error


def test_environment_overrides_the_file_and_is_named_in_errors(monkeypatch, tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text("history_size = 10\n[sinks.sse]\nheartbeat = 3\n")
    monkeypatch.setenv("RELAY_SSE_HEARTBEAT", "7.5")
    settings = create_app(str(path)).extensions["relay"].config
    assert settings.section("")["history_size"] == 10
    assert settings.section("sinks.sse")["heartbeat"] == 7.5
    text = problems(str(path), monkeypatch, RELAY_HISTORY_SIZE="ten")
    assert "history_size: expected an integer, got 'ten' (from RELAY_HISTORY_SIZE)" in text


def test_list_from_environment_is_comma_separated(monkeypatch):
    monkeypatch.setenv("RELAY_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = create_app({}).extensions["relay"].config
    assert settings.section("")["cors_origins"] == ["https://a.example", "https://b.example"]


def test_file_errors_name_the_file(monkeypatch, tmp_path):
    assert "does not exist" in problems(str(tmp_path / "missing.toml"), monkeypatch)
    bad = tmp_path / "bad.toml"
    bad.write_text("history_size = = 3\n")
    assert "is not valid TOML" in problems(str(bad), monkeypatch)


def test_bad_config_stops_gunicorn_with_the_key_named(tmp_path):
    server = RelayServer({"sinks": {"sse": {"hartbeat": 5}}}, directory=tmp_path)
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=20)
    assert "sinks.sse.hartbeat: unknown key" in str(info.value)
    assert server.process.returncode != 0


def test_check_config_command(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text("[sinks.sse]\nretry = 'soon'\n")
    result = subprocess.run([sys.executable, "-m", "relay", "check-config"], env={"RELAY_CONFIG": str(path),
                            "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "sinks.sse.retry: expected an integer, got 'soon'" in result.stderr
