"""Packaging as a newcomer meets it: the distribution's name, what the example plugin depends on,
the README's set-up, and the installed commands run from a directory that is not the checkout."""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import relay
from relay.testing import free_port, http_request, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # where pip put the console scripts of this environment
TAKEN_ON_PYPI = {"relay"}  # an unrelated project: `pip install relay` would install it


def distribution_name() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["name"]


def test_the_distribution_has_a_name_of_its_own_and_provides_the_relay_package():
    name = distribution_name()
    assert canonicalize_name(name) not in TAKEN_ON_PYPI
    # What is installed here is that distribution, and it is what `import relay` comes from.
    assert name in packages_distributions()["relay"]
    installed = distribution(name)
    assert installed.version == relay.__version__
    entry_points = {(ep.group, ep.name): ep.value for ep in installed.entry_points}
    assert entry_points[("console_scripts", "relay")] == "relay.cli:main"
    assert entry_points[("pytest11", "relay")] == "relay.testing"  # the fixtures for plugin authors
    assert entry_points[("relay", "sse")] == "plugins.sse"


def test_the_example_plugin_depends_on_this_distribution():
    project = tomllib.loads((ROOT / "examples/relay-jsonl/pyproject.toml").read_text())["project"]
    requirements = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    assert not TAKEN_ON_PYPI & requirements.keys(), "would install the unrelated project from PyPI"
    name = canonicalize_name(distribution_name())
    assert name in requirements, f"examples/relay-jsonl must depend on {name}: {sorted(requirements)}"
    assert requirements[name].specifier.contains(relay.__version__)


def test_the_readme_sets_up_a_virtualenv_before_every_install():
    readme = (ROOT / "README.md").read_text()
    set_up = readme[readme.index("## Set up\n"):readme.index("\n## ", readme.index("## Set up\n") + 1)]
    blocks = re.findall(r"```sh\n(.+?)\n```", set_up, re.DOTALL)
    installs = [block for block in blocks if "pip install" in block]
    assert len(installs) == 2, blocks  # run the relay; run the tests
    for block in installs:
        assert block.startswith("python3 -m venv .venv && . .venv/bin/activate\n"), block
    assert f"`{distribution_name()}`" in set_up


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment without RELAY_* settings or PYTHONPATH: only the installed relay is found."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RELAY_") and k not in ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")}
    return {**env, **extra}


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (gunicorn and its workers), SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def healthz(port: int) -> int | None:
    try:
        return http_request(f"http://127.0.0.1:{port}/healthz", timeout=1)[0]
    except OSError:
        return None


@pytest.mark.parametrize("command", [
    ["relay", "serve"],
    ["gunicorn", "-c", "python:relay.gunicorn_config", "-k", "gevent", "relay.wsgi_app:app"],
], ids=["relay-serve", "gunicorn-with-relay-settings"])
def test_the_documented_commands_serve_on_RELAY_BIND_from_any_directory(command, tmp_path):
    executable = BIN / command[0]
    assert executable.exists(), f"{executable} missing: install relay with pip install -e ."
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(executable), *command[1:]], cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env=clean_environment(RELAY_BIND=f"127.0.0.1:{port}",
                                                         RELAY_DATA_DIR=str(tmp_path / "data")))
    try:
        def answers():
            if process.poll() is not None:
                raise AssertionError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            return healthz(port) == 200

        wait_until(answers, 20, 0.1, message=f"/healthz on RELAY_BIND 127.0.0.1:{port}")
    finally:
        stop(process)


@pytest.mark.parametrize("app, pythonpath", [
    ("relay.wsgi_app:app", None),          # the installed app, without -c python:relay.gunicorn_config
    ("wsgi:app", str(ROOT)),               # the checkout's wsgi.py, away from its gunicorn.conf.py
    ("wsgi:app", None),                    # the README's command outside the checkout: the installed wsgi
])
def test_gunicorn_without_relays_settings_says_what_to_run(app, pythonpath, tmp_path):
    port = free_port()
    env = clean_environment(RELAY_BIND=f"127.0.0.1:{port}", **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    # --bind: if relay wrongly started, it would answer on a free port, not on 8000.
    process = subprocess.Popen([str(BIN / "gunicorn"), "-k", "gevent", "--bind", f"127.0.0.1:{port}", app],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        try:
            output, _ = process.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn ran relay without relay's settings (healthz: {healthz(port)}) instead of stopping")
        assert process.returncode == 4, output  # gunicorn's "App failed to load"
        assert "without relay's settings" in output and "RELAY_BIND" in output
        assert "relay serve" in output and "gunicorn -c python:relay.gunicorn_config relay.wsgi_app:app" in output
    finally:
        stop(process)
