"""``relay webhooks …``: the admin API from the command line.

Talks to a running relay over HTTP (``--url`` or ``RELAY_URL``) with the admin token
(``--token`` or ``RELAY_WEBHOOKS_ADMIN_TOKEN``), so it works the same with the SQLite and the
Redis store and never opens the store behind the workers' backs. Every command prints a table
(or a few ``key: value`` lines) for people, and the relay's JSON answer with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from relay.api import CommandError, add_client_options, call, fail, print_json, print_table

TOKEN_HELP = "the admin token (sinks.webhooks.admin_token; default: $RELAY_WEBHOOKS_ADMIN_TOKEN)"
STATUSES = ("pending", "succeeded", "dead", "cancelled")

ENDPOINT_COLUMNS = [("id", "id"), ("enabled", "enabled"), ("origin", "origin"), ("url", "url"),
                    ("channels", "channels"), ("events", "events"), ("failing since", "failing_since"),
                    ("note", "disabled_reason")]
DELIVERY_COLUMNS = [("id", "id"), ("endpoint", "endpoint_id"), ("status", "status"), ("attempts", "attempts"),
                    ("channel", "channel"), ("event", "event_type"), ("event id", "event_id"),
                    ("created", "created_at"), ("last status", "last_status"), ("last error", "last_error")]
ATTEMPT_COLUMNS = [("delivery", "delivery_id"), ("attempt", "attempt"), ("started", "started_at"),
                   ("status", "status_code"), ("ms", "latency_ms"), ("outcome", "outcome"), ("error", "error")]


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    token = args.token or os.environ.get("RELAY_WEBHOOKS_ADMIN_TOKEN")
    if not token:
        raise CommandError("no admin token: pass --token or set RELAY_WEBHOOKS_ADMIN_TOKEN", 2)
    return call(args, method, path, body, token)


def _show_fields(answer: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = answer.get(key)
        print(f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")


# -- the commands: each returns what the relay answered and how to print it for people ----------

def _list(args):
    answer = _admin(args, "GET", "/webhooks")
    return answer, lambda: print_table(answer["endpoints"], ENDPOINT_COLUMNS, "no webhook endpoints")


def _show(args):
    answer = _admin(args, "GET", f"/webhooks/{_quote(args.endpoint)}")
    return answer, lambda: _show_fields(answer, tuple(answer))


def _add(args):
    body: dict[str, Any] = {"url": args.endpoint_url, "channels": args.channel}
    for key, value in (("events", args.event), ("id", args.id), ("description", args.description),
                       ("secret", args.secret), ("max_concurrency", args.max_concurrency)):
        if value is not None:
            body[key] = value
    if args.disabled:
        body["enabled"] = False
    answer = _admin(args, "POST", "/webhooks", body)
    return answer, lambda: _show_fields(answer, ("id", "url", "channels", "events", "enabled", "secret"))


def _update(args):
    body: dict[str, Any] = {}
    for key, value in (("url", args.endpoint_url), ("channels", args.channel), ("events", args.event),
                       ("description", args.description), ("max_concurrency", args.max_concurrency)):
        if value is not None:
            body[key] = value
    if not body:
        raise CommandError("nothing to change: give --endpoint-url, --channel, --event, --description or "
                           "--max-concurrency", 2)
    answer = _admin(args, "PATCH", f"/webhooks/{_quote(args.endpoint)}", body)
    return answer, lambda: _show_fields(answer, ("id", "url", "channels", "events", "enabled"))


def _delete(args):
    _admin(args, "DELETE", f"/webhooks/{_quote(args.endpoint)}")
    answer = {"deleted": args.endpoint}
    return answer, lambda: print(f"deleted {args.endpoint}")


def _secret(args):
    answer = _admin(args, "GET", f"/webhooks/{_quote(args.endpoint)}/secret")
    return answer, lambda: _show_fields(answer, ("secret", "signing_secrets"))


def _rotate_secret(args):
    body = {"secret": args.secret} if args.secret else {}
    answer = _admin(args, "POST", f"/webhooks/{_quote(args.endpoint)}/rotate-secret", body)
    return answer, lambda: _show_fields(answer, ("secret", "signing_secrets"))


def _deliveries(args):
    query = {"limit": args.limit, **({"status": args.status} if args.status else {}),
             **({"since": args.since} if args.since else {})}
    answer = _admin(args, "GET", f"/webhooks/{_quote(args.endpoint)}/deliveries?{urllib.parse.urlencode(query)}")
    return answer, lambda: print_table(answer["deliveries"], DELIVERY_COLUMNS, "no deliveries")


def _attempts(args):
    query = {"limit": args.limit, **({"delivery": args.delivery} if args.delivery else {})}
    answer = _admin(args, "GET", f"/webhooks/{_quote(args.endpoint)}/attempts?{urllib.parse.urlencode(query)}")
    return answer, lambda: print_table(answer["attempts"], ATTEMPT_COLUMNS, "no attempts")


def _dead_letters(args):
    query = {"limit": args.limit, **({"endpoint": args.endpoint} if args.endpoint else {})}
    answer = _admin(args, "GET", f"/webhooks/dead-letters?{urllib.parse.urlencode(query)}")
    return answer, lambda: print_table(answer["dead_letters"], DELIVERY_COLUMNS, "no dead letters")


def _resend(args):
    body: dict[str, Any] = {"ids": args.ids} if args.ids else {}
    if args.endpoint:
        body["endpoint"] = args.endpoint
    answer = _admin(args, "POST", "/webhooks/dead-letters/resend", body)
    return answer, lambda: print(f"requeued {answer['requeued']}")


def _replay(args):
    answer = _admin(args, "POST", f"/webhooks/{_quote(args.endpoint)}/replay", {"since": args.since})
    return answer, lambda: print(f"requeued {answer['requeued']}")


def _toggle(args):
    answer = _admin(args, "POST", f"/webhooks/{_quote(args.endpoint)}/{args.action}")
    return answer, lambda: print_table([answer], ENDPOINT_COLUMNS, "")


def _run(command: Callable) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: JSON or the people's view on stdout, errors on stderr with the exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            answer, show = command(args)
        except CommandError as exc:
            return fail(f"relay webhooks {args.action}", exc)
        if args.json:
            print_json(answer)
        else:
            show()
        return 0

    return run


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``relay webhooks`` to the ``relay`` command's subcommands."""
    webhooks = commands.add_parser(
        "webhooks", help="manage webhook endpoints, deliveries and dead letters through the admin API",
        description="Manage the webhook sink of a running relay through its admin API (set "
                    "sinks.webhooks.admin_token). Options go before or after the action.")
    add_client_options(webhooks, token_help=TOKEN_HELP)
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")

    def action(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        add_client_options(parser, token_help=TOKEN_HELP)
        parser.set_defaults(func=_run(func))
        return parser

    def endpoint_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint's id (as relay webhooks list shows it)")

    def limit_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=100, help="at most this many rows (default: 100)")

    action("list", _list, "list the endpoints and their state")
    endpoint_arg(action("show", _show, "show one endpoint"))

    add = action("add", _add, "add an endpoint; prints its signing secret")
    add.add_argument("endpoint_url", metavar="URL", help="where to POST the webhooks (http or https)")
    add.add_argument("--channel", "-c", action="append", required=True,
                     help="channel or glob to deliver (repeat for several)")
    add.add_argument("--event", "-e", action="append", help="only these event names or globs (repeatable; "
                                                            "default: every event)")
    add.add_argument("--id", help="the endpoint id (letters, digits, _ and -; default: ep_ and random hex)")
    add.add_argument("--description", help="a note for people")
    add.add_argument("--secret", help="the signing secret, whsec_ and base64 (default: a new random one)")
    add.add_argument("--max-concurrency", type=int, metavar="N",
                     help="deliveries in flight at once (0: the sink's limit)")
    add.add_argument("--disabled", action="store_true", help="add it disabled")

    update = action("update", _update, "change an endpoint added through the API")
    endpoint_arg(update)
    update.add_argument("--endpoint-url", metavar="URL", help="the new URL to POST the webhooks to")
    update.add_argument("--channel", "-c", action="append", help="channels or globs (replaces the list)")
    update.add_argument("--event", "-e", action="append", help="event names or globs (replaces the list)")
    update.add_argument("--description", help="a note for people")
    update.add_argument("--max-concurrency", type=int, metavar="N",
                        help="deliveries in flight at once (0: the sink's limit)")

    endpoint_arg(action("delete", _delete, "delete an endpoint added through the API"))
    endpoint_arg(action("secret", _secret, "print an endpoint's signing secret(s)"))
    rotate = action("rotate-secret", _rotate_secret,
                    "give an endpoint a new signing secret; the old one also signs during the grace period")
    endpoint_arg(rotate)
    rotate.add_argument("--secret", help="the new secret, whsec_ and base64 (default: a new random one)")

    deliveries = action("deliveries", _deliveries, "list an endpoint's deliveries, newest first")
    endpoint_arg(deliveries)
    deliveries.add_argument("--status", choices=STATUSES, help="only deliveries in this state")
    deliveries.add_argument("--since", help="only deliveries created since: RFC 3339 time or epoch seconds")
    limit_arg(deliveries)

    attempts = action("attempts", _attempts, "list the attempts to deliver to one endpoint, newest first")
    endpoint_arg(attempts)
    attempts.add_argument("--delivery", help="only this delivery (its webhook-id)")
    limit_arg(attempts)

    dead = action("dead-letters", _dead_letters, "list deliveries whose last attempt failed")
    dead.add_argument("--endpoint", help="only this endpoint's")
    limit_arg(dead)

    resend = action("resend", _resend, "send dead letters again: all, one endpoint's, or these ids")
    resend.add_argument("ids", nargs="*", metavar="ID", help="webhook-ids to send again (default: every dead "
                                                             "letter)")
    resend.add_argument("--endpoint", help="only this endpoint's dead letters")

    replay = action("replay", _replay, "send an endpoint's deliveries since a time again")
    endpoint_arg(replay)
    replay.add_argument("--since", required=True, help="RFC 3339 time (2026-11-26T15:00:00Z) or epoch seconds")

    for name in ("enable", "disable"):
        endpoint_arg(action(name, _toggle, f"{name} an endpoint"))

