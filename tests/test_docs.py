"""The docs are generated from the code or checked against it, so they cannot drift."""

import re
from pathlib import Path

from relay.reference import config_markdown, hooks_markdown

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate with: python -m relay.reference {} > docs/{}"


def test_hook_reference_is_up_to_date():
    assert (ROOT / "docs/hooks.md").read_text() == hooks_markdown(), REGENERATE.format("hooks", "hooks.md")


def test_configuration_reference_is_up_to_date():
    assert (ROOT / "docs/configuration.md").read_text() == config_markdown(), \
        REGENERATE.format("config", "configuration.md")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme, re.DOTALL)
    run, test = commands[0], commands[1]
    assert run.endswith("gunicorn -k gevent wsgi:app")
    assert "pytest" in test and test in (ROOT / ".ci/run").read_text()


def test_plugin_guide_shows_the_example_files_as_they_are():
    guide = (ROOT / "docs/writing-plugins.md").read_text()
    example = ROOT / "examples/relay-jsonl"
    for path in ("relay_jsonl/sink.py", "relay_jsonl/source.py", "tests/test_relay_jsonl.py"):
        assert f"```python\n# {path}\n{(example / path).read_text()}```" in guide, f"guide out of date: {path}"
    for path in ("relay_jsonl/sink.py", "relay_jsonl/source.py"):
        assert len((example / path).read_text().splitlines()) < 60


def test_hook_reference_is_markdown_without_rst_roles():
    page = hooks_markdown()
    for rst in (":class:`", ":func:`", ":meth:`", ":data:`", ":param", ":return:", ":raises", "``"):
        assert rst not in page, f"docs/hooks.md shows reStructuredText {rst!r}"
    assert "**Parameters**\n\n- `url`: the `backbone` setting" in page
