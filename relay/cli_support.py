"""What every ``relay`` command that talks to a running relay shares: its options, one HTTP
call that turns an error answer into a readable message, and output as a table or JSON.

The client options (``--url``, ``--token``, ``--json``, ``--timeout``) are declared on the top
parser with real defaults and on every sub-command with ``argparse.SUPPRESS``, so they are accepted
before or after the sub-command (``relay --url X webhooks list`` and ``relay webhooks list --url X``)
and a sub-command that does not see the option leaves the top parser's value alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


class CommandError(Exception):
    """A failure to report on stderr (without a traceback) and end the command with ``code``:
    1 when the relay refused or could not be reached, 2 for a mistake on the command line."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def add_client_options(parser: argparse.ArgumentParser, *, token_help: str, top: bool = False) -> None:
    """``--url``, ``--token``, ``--json`` and ``--timeout`` on ``parser``. Only the top parser
    (``top=True``) holds defaults; sub-commands use SUPPRESS so they never overwrite a value
    given earlier on the line."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("talking to a relay")
    group.add_argument("--url", default=default(None), metavar="URL",
                       help=f"the relay's address (default: $RELAY_URL or {DEFAULT_URL})")
    group.add_argument("--token", default=default(None), metavar="TOKEN", help=token_help)
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the relay's JSON answer instead of a table")
    group.add_argument("--timeout", type=float, default=default(10.0), metavar="SECONDS",
                       help="give up waiting for the relay after this long (default: 10)")


def relay_url(args: argparse.Namespace) -> str:
    return (args.url or os.environ.get("RELAY_URL") or DEFAULT_URL).rstrip("/")


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """One request to the relay at ``--url``; the decoded JSON answer (``None`` for an empty one).

    :raises CommandError: with the relay's own message for a non-2xx answer, or saying why the
        relay could not be reached.
    """
    url = relay_url(args) + path
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{method} {url}: {exc.code} {_error_message(exc)}") from None
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, malformed URL
        reason = getattr(exc, "reason", exc)
        raise CommandError(f"cannot reach the relay at {relay_url(args)}: {reason}") from None
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        raise CommandError(f"{method} {url}: the answer is not JSON: {text[:200]!r}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The relay's ``{"error", "message"}`` answer as ``error: message``, or the raw text."""
    text = exc.read().decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text or exc.reason
    if isinstance(answer, dict) and "message" in answer:
        return f"{answer.get('error', exc.reason)}: {answer['message']}"
    return text


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(rows: Iterable[dict], columns: Sequence[tuple[str, str]], empty: str) -> None:
    """Rows as aligned columns under upper-case headings; ``columns`` is (heading, key) pairs.
    Lists print comma-separated, ``None`` as ``-``; ``empty`` is printed when there is no row."""
    cells = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    if not cells:
        print(empty)
        return
    headings = [heading.upper() for heading, _ in columns]
    widths = [max(len(text) for text in column) for column in zip(headings, *cells)]
    for line in [headings, *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return " ".join(str(value).split())  # one line per row, whatever the text holds


def fail(prefix: str, exc: CommandError) -> int:
    print(f"{prefix}: {exc}", file=sys.stderr)
    return exc.code
