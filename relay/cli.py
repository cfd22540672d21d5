"""The ``relay`` command: serve, check-config, plugins, publish."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from relay.config import ConfigError
from relay.plugins import PluginLoadError


def check_config(quiet: bool = False) -> bool:
    """Build the app once; print what is wrong and return False if it cannot be built."""
    from relay.app import create_app

    try:
        create_app()
    except (ConfigError, PluginLoadError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return False
    if not quiet:
        print(f"relay: configuration OK ({os.environ.get('RELAY_CONFIG') or 'defaults, no RELAY_CONFIG'})")
    return True


def _serve(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:relay.gunicorn_config"]
    if args.bind:
        argv += ["--bind", args.bind]
    os.execv(sys.executable, argv + ["relay.wsgi_app:app"])
    return 0  # not reached


def _plugins(args: argparse.Namespace) -> int:
    from relay.plugins import describe, get_plugin_manager

    try:
        pm = get_plugin_manager()
    except PluginLoadError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    for row in describe(pm):
        print(f"{row['name']:<16} {row['origin']:<24} {row['module']}")
        print(f"{'':<16} hooks: {', '.join(row['hooks']) or 'none'}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    data = args.data
    if data is not None:
        try:
            data = json.loads(data)
        except ValueError:
            pass  # plain text is sent as a string
    body = json.dumps({"event": args.event, "data": data}).encode()
    url = f"{args.url.rstrip('/')}/events/{urllib.request.quote(args.channel, safe='')}"
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as exc:
        print(f"relay: {exc.code} {exc.read().decode()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relay: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run gunicorn with the gevent worker and relay's settings")
    serve.add_argument("--bind", help="address:port (default RELAY_BIND or 127.0.0.1:8000)")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="validate RELAY_CONFIG and RELAY_* variables")
    check.add_argument("--quiet", action="store_true", help="print only problems")
    check.set_defaults(func=lambda args: 0 if check_config(quiet=args.quiet) else 1)
    plugins = commands.add_parser("plugins", help="list loaded plugins and the hooks they implement")
    plugins.set_defaults(func=_plugins)
    publish = commands.add_parser("publish", help="publish one event over HTTP")
    publish.add_argument("channel")
    publish.add_argument("event")
    publish.add_argument("data", nargs="?", help="JSON, or text sent as a string")
    publish.add_argument("--url", default=os.environ.get("RELAY_URL", "http://127.0.0.1:8000"))
    publish.set_defaults(func=_publish)
    from plugins.webhooks.cli import add_command as add_webhooks_command  # the webhook sink's admin CLI

    add_webhooks_command(commands)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
