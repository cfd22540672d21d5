"""One home for settings: gunicorn's settings are relay's ``[server]`` section (validated, in
docs/configuration.md), what gunicorn actually uses reaches the app without environment writes,
an explicit ``create_app({...})`` wins over ``RELAY_*`` variables, and ``relay_backbone`` gets a
fully built ``Relay``."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from relay.app import create_app
from relay.config import ConfigError
from relay.testing import RelayServer, free_port, http_request

DOCS = Path(__file__).resolve().parent.parent / "docs"
SERVER_KEYS = {"bind": "RELAY_BIND", "workers": "RELAY_WORKERS", "worker_connections": "RELAY_WORKER_CONNECTIONS",
               "graceful_timeout": "RELAY_GRACEFUL_TIMEOUT"}


@pytest.fixture
def clean_env(monkeypatch):
    """No RELAY_* variable from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def plugin_module(tmp_path, clean_env):
    """Write a plugin module importable by name (in-process and by a gunicorn started here)."""
    clean_env.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text("from relay import hookimpl\n" + textwrap.dedent(source))
        return name

    return write


def test_server_settings_are_in_the_configuration_reference_with_their_variables():
    text = (DOCS / "configuration.md").read_text()
    assert "## `[server]`" in text
    section = text.split("## `[server]`", 1)[1].split("\n## ", 1)[0]
    for key, env in SERVER_KEYS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `server.{key}` |")), None)
        assert row is not None, f"server.{key} is missing from docs/configuration.md"
        assert f"`{env}`" in row


@pytest.mark.parametrize("env, message", [
    ({"RELAY_WORKERS": "abc"}, "server.workers: expected an integer, got 'abc' (from RELAY_WORKERS)"),
    ({"RELAY_WORKER_CONNECTIONS": "0"}, "server.worker_connections: 0 is too small (from RELAY_WORKER_CONNECTIONS)"),
    ({"RELAY_GRACEFUL_TIMEOUT": "soon"},
     "server.graceful_timeout: expected an integer, got 'soon' (from RELAY_GRACEFUL_TIMEOUT)"),
])
def test_a_bad_server_setting_stops_gunicorn_naming_the_key(tmp_path, env, message):
    server = RelayServer(env=env, directory=tmp_path)
    try:
        with pytest.raises(RuntimeError) as info:
            server.start(timeout=20)
        assert message in str(info.value)
        assert "Traceback" not in str(info.value)  # a message, not gunicorn's config-loading crash
        assert server.process.returncode != 0
    finally:
        server.stop()


def test_a_bad_server_setting_in_the_file_stops_gunicorn_naming_the_key(tmp_path):
    server = RelayServer({"server": {"workers": 0}}, directory=tmp_path)
    del server.env["RELAY_WORKERS"]  # the file's value counts
    try:
        with pytest.raises(RuntimeError) as info:
            server.start(timeout=20)
        assert "server.workers: 0 is too small" in str(info.value)
    finally:
        server.stop()


PROBE = """
    import os

    @hookimpl
    def relay_init_app(app, relay):
        @app.get("/probe")
        def probe():
            return {"environ": {k: v for k, v in os.environ.items() if k.startswith("RELAY_")},
                    "server": relay.config.as_dict().get("server")}
"""


def test_gunicorns_command_line_reaches_the_app_without_environment_writes(plugin_module, tmp_path):
    """``-b``/``--worker-connections``/``--graceful-timeout`` on gunicorn's command line win over
    RELAY_* and reach the app's settings; the worker's environment keeps what it started with."""
    name = plugin_module("server_probe", PROBE)
    port = free_port()
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    server = RelayServer(env={"RELAY_PLUGINS": name, "PYTHONPATH": pythonpath, "RELAY_WORKER_CONNECTIONS": "500"},
                         directory=tmp_path / "served", port=port,
                         gunicorn_args=["-b", f"127.0.0.1:{port}", "--worker-connections", "300",
                                        "--graceful-timeout", "3"])
    del server.env["RELAY_BIND"], server.env["RELAY_GRACEFUL_TIMEOUT"]  # only the command line names them
    try:
        server.start(timeout=20)
        status, _, body = http_request(f"{server.url}/probe", timeout=5)
        assert status == 200
        seen = json.loads(body)
        started_with = {k: v for k, v in server.env.items() if k.startswith("RELAY_")}
        assert seen["environ"] == started_with  # no RELAY_BIND, RELAY_WORKER_CONNECTIONS still "500"
        assert seen["server"] == {"bind": [f"127.0.0.1:{port}"], "workers": 1, "worker_connections": 300,
                                  "graceful_timeout": 3}
    finally:
        server.stop()


def test_open_publishing_is_refused_on_a_non_loopback_bind_from_the_command_line(tmp_path):
    """gunicorn's -b wins over RELAY_BIND for the open-publishing check too."""
    port = free_port()
    server = RelayServer(directory=tmp_path, port=port, gunicorn_args=["-b", f"0.0.0.0:{port}"])
    assert server.env["RELAY_BIND"] == f"127.0.0.1:{port}"  # what the environment says: loopback
    try:
        with pytest.raises(RuntimeError) as info:
            server.start(timeout=20)
        assert f"relay would listen on 0.0.0.0:{port} with publishing open to anyone" in str(info.value)
    finally:
        server.stop()


def test_the_apps_checks_read_the_server_section(clean_env):
    with pytest.raises(ConfigError) as refused:
        create_app({"server": {"bind": ["0.0.0.0:8000"]}})
    assert "relay would listen on 0.0.0.0:8000 with publishing open to anyone" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        create_app({"server": {"worker_connections": 130}, "sinks": {"sse": {"max_connections": 31}}})
    assert "sinks.sse.max_connections: 31 streams" in str(refused.value) and "set it to 30 or less" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        create_app({"server": {"workers": 2}})
    assert "backbone: 'memory' serves a single worker, and 2 workers are configured" in str(refused.value)


def test_the_server_values_given_to_create_app_replace_the_configured_ones(clean_env):
    clean_env.setenv("RELAY_WORKER_CONNECTIONS", "500")
    app = create_app({"server": {"graceful_timeout": 7}},
                     server={"bind": ["unix:/tmp/relay.sock"], "workers": 1, "worker_connections": 300,
                             "graceful_timeout": 3})
    assert app.extensions["relay"].config.section("server") == {
        "bind": ["unix:/tmp/relay.sock"], "workers": 1, "worker_connections": 300, "graceful_timeout": 3}


def test_an_explicit_config_dict_wins_over_the_environment(clean_env, tmp_path):
    clean_env.setenv("RELAY_HISTORY_SIZE", "9")
    clean_env.setenv("RELAY_BODY_TIMEOUT", "3")
    relay = create_app({"history_size": 5}).extensions["relay"]
    assert relay.history_size == 5  # the dict's key wins
    assert relay.config.section("")["body_timeout"] == 3.0  # the environment fills the others
    assert create_app().extensions["relay"].history_size == 9  # no dict: defaults and environment
    path = tmp_path / "relay.toml"
    path.write_text("history_size = 3\n")
    clean_env.setenv("RELAY_CONFIG", str(path))
    assert create_app().extensions["relay"].history_size == 9  # the environment wins over the file


def test_an_explicit_config_dict_decides_which_plugins_load(clean_env):
    clean_env.setenv("RELAY_DISABLE_PLUGINS", "demo")
    assert create_app().extensions["relay"].plugins.get_plugin("demo") is None
    assert create_app({"disable_plugins": []}).extensions["relay"].plugins.get_plugin("demo") is not None


def test_relay_backbone_gets_a_fully_built_relay(plugin_module, tmp_path):
    name = plugin_module("backbone_probe", """
        from relay.backbone import MemoryBackbone

        SEEN = {}

        @hookimpl
        def relay_backbone(relay, url):
            SEEN.update({name: hasattr(relay, name) for name in
                         ("bus", "supervisor", "hook_timeout", "sinks", "durable_sources", "state")})
            return MemoryBackbone(relay.history_size, deliver=relay.deliver)
    """)
    relay = create_app({"backbone": "redis://127.0.0.1:1/0", "plugins": [name], "disable_plugins": ["redis_backbone"],
                        "data_dir": str(tmp_path / "data")}).extensions["relay"]
    import importlib

    seen = importlib.import_module(name).SEEN
    assert seen and all(seen.values()), seen
    assert relay.backbone is not None
