"""``relay webhooks …``: the admin API from the command line.

Talks to a running relay over HTTP (``--url`` or ``RELAY_URL``) with the admin token
(``--token`` or ``RELAY_WEBHOOKS_ADMIN_TOKEN``), so it works the same with the SQLite and the
Redis store and never opens the store behind the workers' backs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> Any:
    if not args.token:
        raise SystemExit("relay webhooks: no admin token: pass --token or set RELAY_WEBHOOKS_ADMIN_TOKEN")
    url = args.url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Authorization": f"Bearer {args.token}",
                                                 "Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"relay webhooks: {exc.code} {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise SystemExit(f"relay webhooks: cannot reach {url}: {exc}") from None


def _print(value: Any) -> int:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


def _list(args):
    return _print(_call(args, "GET", "/webhooks"))


def _attempts(args):
    query = urllib.parse.urlencode({"limit": args.limit, **({"delivery": args.delivery} if args.delivery else {})})
    return _print(_call(args, "GET", f"/webhooks/{urllib.parse.quote(args.endpoint)}/attempts?{query}"))


def _dead_letters(args):
    query = urllib.parse.urlencode({"limit": args.limit, **({"endpoint": args.endpoint} if args.endpoint else {})})
    return _print(_call(args, "GET", f"/webhooks/dead-letters?{query}"))


def _resend(args):
    body: dict[str, Any] = {"ids": args.ids} if args.ids else {}
    if args.endpoint:
        body["endpoint"] = args.endpoint
    return _print(_call(args, "POST", "/webhooks/dead-letters/resend", body))


def _replay(args):
    return _print(_call(args, "POST", f"/webhooks/{urllib.parse.quote(args.endpoint)}/replay", {"since": args.since}))


def _toggle(args):
    return _print(_call(args, "POST", f"/webhooks/{urllib.parse.quote(args.endpoint)}/{args.action}"))


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``relay webhooks`` to the ``relay`` command's subcommands."""
    webhooks = commands.add_parser("webhooks", help="list endpoints, attempts and dead letters; resend, replay")
    webhooks.add_argument("--url", default=os.environ.get("RELAY_URL", "http://127.0.0.1:8000"))
    webhooks.add_argument("--token", default=os.environ.get("RELAY_WEBHOOKS_ADMIN_TOKEN", ""))
    actions = webhooks.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the endpoints and their state").set_defaults(func=_list)
    attempts = actions.add_parser("attempts", help="the attempt log of one endpoint, newest first")
    attempts.add_argument("endpoint")
    attempts.add_argument("--delivery", help="only this delivery (webhook-id)")
    attempts.add_argument("--limit", type=int, default=100)
    attempts.set_defaults(func=_attempts)
    dead = actions.add_parser("dead-letters", help="deliveries whose last attempt failed")
    dead.add_argument("--endpoint")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(func=_dead_letters)
    resend = actions.add_parser("resend", help="send dead letters again (all, one endpoint's, or these ids)")
    resend.add_argument("ids", nargs="*", help="webhook-ids (default: every dead letter)")
    resend.add_argument("--endpoint")
    resend.set_defaults(func=_resend)
    replay = actions.add_parser("replay", help="send an endpoint's deliveries since a time again")
    replay.add_argument("endpoint")
    replay.add_argument("--since", required=True, help="RFC 3339 time (2026-11-26T15:00:00Z) or epoch seconds")
    replay.set_defaults(func=_replay)
    for action in ("enable", "disable"):
        toggle = actions.add_parser(action, help=f"{action} an endpoint")
        toggle.add_argument("endpoint")
        toggle.set_defaults(func=_toggle)


if __name__ == "__main__":  # pragma: no cover - use `relay webhooks`
    parser = argparse.ArgumentParser(prog="relay")
    add_command(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.func(parsed))
