"""The example third-party package in examples/relay-jsonl, installed with pip like any plugin.

It is installed into a directory of its own and put on PYTHONPATH, so relay can only find it
through its ``relay`` entry points; its own tests then run against a real relay.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "relay-jsonl"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(EXAMPLE)], check=True, timeout=120)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def test_relay_discovers_the_installed_package(installed):
    result = subprocess.run([sys.executable, "-m", "relay", "plugins"], env=installed,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith(" ")}
    assert "relay-jsonl 0.1.0" in rows["jsonl_sink"] and "relay-jsonl 0.1.0" in rows["jsonl_source"]
    assert "relay_deliver" in result.stdout and "relay_sources" in result.stdout


def test_the_example_packages_own_tests_pass(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=60",
                             str(EXAMPLE / "tests")], env=installed, capture_output=True, text=True,
                            timeout=110, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
