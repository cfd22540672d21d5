"""The plugin API is one module, and the built-in plugins and the example use nothing else.

A third-party author copies a built-in plugin as a start: it must not depend on relay's
internals, which may change. ``relay.api`` is the contract; ``relay.testing`` is the testing kit
(test files only); ``relay`` itself exports ``hookimpl``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import relay.api

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"relay", "relay.api"}
ALLOWED_IN_TESTS = ALLOWED | {"relay.testing"}


def plugin_files() -> list[Path]:
    files = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))
    return [p for p in files if "build" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)]


def relay_imports(path: Path) -> list[tuple[int, str]]:
    """Every module of the ``relay`` package that ``path`` imports, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "relay" or node.module.startswith("relay."):
                found.append((node.lineno, node.module))
                if node.module == "relay":  # ``from relay import x`` may name a submodule
                    found += [(node.lineno, f"relay.{a.name}") for a in node.names
                              if importlib.util.find_spec(f"relay.{a.name}") is not None]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name == "relay" or a.name.startswith("relay.")]
    return found


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_built_in_plugins_and_the_example_import_only_the_plugin_api(path):
    allowed = ALLOWED_IN_TESTS if "tests" in path.parts else ALLOWED
    outside = [f"line {line}: {module}" for line, module in relay_imports(path) if module not in allowed]
    assert not outside, f"{path.relative_to(ROOT)} imports relay internals ({', '.join(outside)}); " \
                        "use relay.api, or add what the plugin needs to relay.api"


def test_the_check_catches_an_internal_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from relay.api import Event\nfrom relay.backbone import Replay\nimport relay.metrics\n"
                      "from relay import hookimpl, sse\n")
    assert [m for _, m in relay_imports(sample)] == ["relay.api", "relay.backbone", "relay.metrics", "relay",
                                                     "relay.sse"]


def test_every_name_of_the_api_is_importable_and_listed_in_its_docstring():
    for name in relay.api.__all__:
        getattr(relay.api, name)
        assert f"`{name}`" in relay.api.__doc__, f"relay.api.{name} is not listed in relay.api's docstring"
    methods = {name for name in vars(relay.api.Relay) if not name.startswith("_")}
    assert {"publish", "transform", "deliver_durable", "durable_sinks", "replay", "authorize"} <= methods
