"""The ``relay`` command as people run it: the installed console script (or ``python -m relay``)
in a subprocess, against a real relay under gunicorn where it talks to one."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from webhook_support import TOKEN, Receiver, webhook_config

import relay
from relay.cli import build_parser
from relay.testing import RelayServer, wait_until

KEY = "a-long-random-secret-for-cli-tests-0123456789"
SCRIPT = Path(sys.executable).with_name("relay")  # the console script pip installed next to python


def run(*args: str, env: dict[str, str] | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """``relay ARGS`` with no RELAY_* variable from the test's own environment but ``env``."""
    command = [sys.executable, "-m", "relay"] if module or not SCRIPT.exists() else [str(SCRIPT)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run([*command, *args], env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=30, check=False)


def token(publish=("demo",)) -> str:
    return jwt.encode({"relay": {"publish": list(publish)}, "exp": int(time.time()) + 300}, KEY, algorithm="HS256")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One relay for the module: publishing needs a JWT, every channel may be read, webhooks on."""
    config = {"auth": {"jwt_key": KEY, "public_channels": ["*"]}, **webhook_config([])}
    started = RelayServer(config, directory=tmp_path_factory.mktemp("cli"))
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture(scope="module")
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


# -- version and help -----------------------------------------------------------------------------

def test_version_prints_the_version():
    result = run("--version")
    assert (result.returncode, result.stdout) == (0, f"relay {relay.__version__}\n"), result.stderr


def test_help_lists_every_command_in_plain_text():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check-config", "plugins", "publish", "webhooks"):
        assert f"\n    {command} " in result.stdout, command
    assert "``" not in result.stdout and "RELAY_TOKEN" in result.stdout
    webhooks = run("webhooks", "--help")
    for action in ("list", "add", "delete", "rotate-secret", "deliveries", "attempts", "dead-letters", "resend",
                   "replay", "enable", "disable"):
        assert f"\n    {action} " in webhooks.stdout, action


def test_plugins_add_their_commands_through_the_hook(tmp_path):
    """`relay webhooks` comes from the webhook plugin (relay_cli_commands): disabled, it is gone;
    a plugin that cannot load leaves the core commands working and says why on a usage error."""
    disabled = run("--help", env={"RELAY_DISABLE_PLUGINS": "webhooks"})
    assert disabled.returncode == 0 and "\n    publish " in disabled.stdout
    assert "\n    webhooks " not in disabled.stdout
    assert run("webhooks", "list", env={"RELAY_DISABLE_PLUGINS": "webhooks"}).returncode == 2
    broken = {"RELAY_PLUGINS": "nosuchmod"}
    assert run("--version", env=broken).returncode == 0
    missing = run("webhooks", "list", env=broken)
    assert missing.returncode == 2 and "plugin commands are unavailable" in missing.stderr
    assert "'nosuchmod'" in missing.stderr


def _parsers(parser: argparse.ArgumentParser, name: str = "relay"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for sub, subparser in action.choices.items():
                assert helps.get(sub), f"{name} {sub} has no help text"
                yield from _parsers(subparser, f"{name} {sub}")


def test_every_command_and_option_has_help_text():
    parsers = dict(_parsers(build_parser()))
    assert {"relay publish", "relay webhooks add", "relay webhooks rotate-secret"} <= set(parsers)
    for name, parser in parsers.items():
        assert parser.description, f"{name} has no description"
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help and "``" not in action.help, f"{name} {action.option_strings or action.dest}"


# -- publish --------------------------------------------------------------------------------------

def test_publish_sends_the_token_from_the_option_or_the_environment(server):
    with server.sse("/events/demo") as stream:
        refused = run("publish", "demo", "emote", '{"emote": "wave"}', "--url", server.url)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "401" in refused.stderr and "a token is required to publish" in refused.stderr
        by_option = run("publish", "demo", "emote", '{"emote": "dolphin"}', "--url", server.url, "--token", token())
        assert by_option.returncode == 0, by_option.stderr
        assert stream.next_event(5).json() == {"emote": "dolphin"}
        by_env = run("publish", "demo", "emote", '{"emote": "tada"}',
                     env={"RELAY_URL": server.url, "RELAY_TOKEN": token()})
        assert by_env.returncode == 0, by_env.stderr
        assert stream.next_event(5).json() == {"emote": "tada"}
        forbidden = run("publish", "other", "emote", "1", env={"RELAY_URL": server.url, "RELAY_TOKEN": token()})
        assert forbidden.returncode == 1 and "403 forbidden: " in forbidden.stderr and "'other'" in forbidden.stderr


def test_malformed_json_is_refused_and_nothing_is_sent_unless_raw(server):
    with server.sse("/events/demo") as stream:
        result = run("publish", "demo", "emote", '{"emote":', "--url", server.url, "--token", token())
        assert result.returncode == 2 and result.stdout == ""
        assert "DATA is not valid JSON" in result.stderr and "--raw" in result.stderr
        nan = run("publish", "demo", "emote", "NaN", "--url", server.url, "--token", token())
        assert nan.returncode == 2 and "NaN is not JSON" in nan.stderr
        assert stream.no_event_within(1.0)
        raw = run("publish", "demo", "emote", '{"emote":', "--raw", "--url", server.url, "--token", token())
        assert raw.returncode == 0, raw.stderr
        assert stream.next_event(5).data == '{"emote":'  # a string is sent as it is


def test_publish_prints_the_answer_once(server):
    args = ("--url", server.url, "--token", token())
    people = run("publish", "demo", "emote", '"hi"', *args)
    assert people.returncode == 0, people.stderr
    assert people.stdout.startswith("published emote to demo (id ") and people.stdout.count("\n") == 1
    machine = run("publish", "demo", "emote", '"hi"', "--json", *args)
    assert machine.returncode == 0, machine.stderr
    assert machine.stdout.endswith("}\n") and not machine.stdout.endswith("\n\n")
    answer = json.loads(machine.stdout)
    assert answer["channel"] == "demo" and answer["id"]


def test_options_are_accepted_before_and_after_the_command(server):
    with server.sse("/events/demo") as stream:
        before = run("--url", server.url, "--token", token(), "publish", "demo", "emote", "1", module=True)
        after = run("publish", "--url", server.url, "demo", "emote", "2", "--token", token(), module=True)
        assert (before.returncode, after.returncode) == (0, 0), before.stderr + after.stderr
        assert [e.json() for e in stream.events(2, 5)] == [1, 2]
    for line in (("--url", server.url, "webhooks", "list"), ("webhooks", "list", "--url", server.url),
                 ("webhooks", "--url", server.url, "list"), ("webhooks", "--json", "list", "--url", server.url)):
        result = run(*line, env={"RELAY_WEBHOOKS_ADMIN_TOKEN": TOKEN})
        assert result.returncode == 0, (line, result.stderr)


def test_unreachable_relay_is_a_clear_error():
    result = run("publish", "demo", "emote", "1", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach the relay at http://127.0.0.1:9" in result.stderr


# -- plugins --------------------------------------------------------------------------------------

def test_plugins_lists_what_the_configured_relay_loads(tmp_path):
    (tmp_path / "boom.py").write_text("import relay\n\n@relay.hookimpl\ndef relay_deliver(event):\n    pass\n")
    config = tmp_path / "relay.toml"
    config.write_text('disable_plugins = ["demo"]\n')
    env = {"PYTHONPATH": str(tmp_path), "RELAY_CONFIG": str(config), "RELAY_PLUGINS": "boom"}
    result = run("plugins", env=env)
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip() and not line.startswith(" ")}
    assert "boom" in names and "sse" in names and "demo" not in names
    listed = json.loads(run("plugins", "--json", env=env).stdout)["plugins"]
    assert {"name": "boom", "origin": "plugins setting", "module": "boom", "hooks": ["relay_deliver"]} in listed


def test_plugins_fails_like_check_config_when_a_plugin_cannot_load(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('this plugin is broken')\n")
    for plugins in ("nosuchmod", "broken"):
        env = {"PYTHONPATH": str(tmp_path), "RELAY_PLUGINS": plugins}
        listed, checked = run("plugins", env=env), run("check-config", env=env)
        assert listed.returncode == checked.returncode == 1, listed.stdout
        assert f"plugin module '{plugins}'" in listed.stderr and listed.stdout == ""


# -- webhooks -------------------------------------------------------------------------------------

def test_webhook_endpoints_are_managed_from_the_command_line(server, receiver):
    env = {"RELAY_URL": server.url, "RELAY_WEBHOOKS_ADMIN_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = run("webhooks", *args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        return result

    added = json.loads(cli("add", f"{receiver.url}/cli", "-c", "hooks", "--id", "ep_cli", "--json").stdout)
    assert added["id"] == "ep_cli" and added["secret"].startswith("whsec_")
    table = cli("list").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "ENABLED", "ORIGIN", "URL"]
    assert table[1].split()[:5] == ["ep_cli", "yes", "api", f"{receiver.url}/cli", "hooks"]

    assert run("publish", "hooks", "order", '{"n": 1}', "--token", token(["hooks"]), env=env).returncode == 0
    delivered = receiver.wait_for(1, path="/cli")[0]
    assert delivered.verify(added["secret"])["data"] == {"n": 1}
    rows = wait_until(lambda: (d := json.loads(cli("deliveries", "ep_cli", "--json").stdout)["deliveries"])
                      and d[0]["status"] == "succeeded" and d, 10)
    assert rows[0]["id"] == delivered.id
    people = cli("deliveries", "ep_cli", "--status", "succeeded").stdout.splitlines()
    assert people[0].split()[:3] == ["ID", "ENDPOINT", "STATUS"] and people[1].split()[:3] == [
        delivered.id, "ep_cli", "succeeded"]
    assert cli("attempts", "ep_cli").stdout.splitlines()[1].split()[:2] == [delivered.id, "1"]

    rotated = json.loads(cli("rotate-secret", "ep_cli", "--json").stdout)
    assert rotated["secret"] != added["secret"] and rotated["signing_secrets"][0] == rotated["secret"]
    assert cli("secret", "ep_cli").stdout.startswith(f"secret: {rotated['secret']}\n")
    assert cli("disable", "ep_cli").stdout.splitlines()[1].split()[:2] == ["ep_cli", "no"]
    assert cli("delete", "ep_cli").stdout == "deleted ep_cli\n"
    assert cli("list").stdout == "no webhook endpoints\n"
    assert json.loads(cli("list", "--json").stdout) == {"endpoints": []}

    missing = run("webhooks", "delete", "ep_cli", env=env)
    assert missing.returncode == 1 and "404 not_found: no webhook endpoint 'ep_cli'" in missing.stderr
    wrong = run("webhooks", "list", "--token", "wrong-token", env=env)
    assert wrong.returncode == 1 and "401 unauthorized" in wrong.stderr
    none = run("webhooks", "list", env={"RELAY_URL": server.url})
    assert none.returncode == 2 and "no admin token" in none.stderr
