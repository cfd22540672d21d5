"""The ``relay`` command: serve, check-config, plugins, publish, and the plugins' commands.

Exit status: 0 when the command did what it says, 1 when the relay (or its configuration) said
no or could not be reached, 2 for a mistake on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse

from relay import __version__
from relay.cli_support import CommandError, add_client_options, call, fail, print_json
from relay.config import ConfigError
from relay.plugins import PluginLoadError

DESCRIPTION = "Run a relay, check its configuration, publish events, and run the commands its plugins add."
EPILOG = """\
environment:
  RELAY_CONFIG                the TOML configuration file (serve, check-config, plugins)
  RELAY_URL                   the address of a running relay (default http://127.0.0.1:8000)
  RELAY_TOKEN                 bearer token for publish

Run "relay COMMAND --help" for a command's options.
"""


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
    # The app the server would build, from the same configuration (RELAY_CONFIG, RELAY_PLUGINS,
    # disable_plugins), so what is listed is what `relay serve` loads, and a plugin that cannot
    # load fails here as it fails there.
    from relay.app import create_app
    from relay.plugins import describe

    try:
        pm = create_app().extensions["relay"].plugins
    except (ConfigError, PluginLoadError) as exc:
        print(f"relay plugins: {exc}", file=sys.stderr)
        return 1
    rows = [row for row in describe(pm) if pm.get_plugin(row["name"]) is not None]  # not blocked names
    if args.json:
        print_json({"plugins": rows})
        return 0
    print(f"{'PLUGIN':<16} {'ORIGIN':<24} MODULE")
    for row in rows:
        print(f"{row['name']:<16} {row['origin']:<24} {row['module']}")
        print(f"{'':<16} hooks: {', '.join(row['hooks']) or 'none'}")
    return 0


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_data(text: str | None, raw: bool) -> tuple[bool, object]:
    """``(present, value)`` for DATA: JSON, or with ``--raw`` the text itself as a string.

    :raises CommandError: (exit 2) when DATA is not valid JSON, naming the problem.
    """
    if text is None:
        return False, None
    if raw:
        return True, text
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise CommandError(f"DATA is not valid JSON ({exc}): {text!r}. Write text as a JSON string "
                           "('\"hello\"') or pass --raw to send it as a string; nothing was sent.", 2) from None


def _publish(args: argparse.Namespace) -> int:
    try:
        present, data = parse_data(args.data, args.raw)
        body: dict = {"event": args.event}
        if present:
            body["data"] = data
        if args.id is not None:
            body["id"] = args.id
        token = args.token or os.environ.get("RELAY_TOKEN")
        answer = call(args, "POST", f"/events/{urllib.parse.quote(args.channel, safe='')}", body, token)
    except CommandError as exc:
        return fail("relay publish", exc)
    if args.json:
        print_json(answer)
    elif isinstance(answer, dict) and answer.get("dropped"):
        print(f"{args.event} to {args.channel}: dropped by a transform plugin")
    else:
        event_id = answer.get("id") if isinstance(answer, dict) else None
        print(f"published {args.event} to {args.channel} (id {event_id})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``relay`` parser: the core commands, and those of the configured plugins
    (``relay_cli_commands``; ``relay webhooks`` comes from the webhook sink)."""
    parser = _Parser(prog="relay", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"relay {__version__}",
                        help="print relay's version and exit")
    add_client_options(parser, top=True,
                       token_help="bearer token sent to the relay (default: the command's variable, "
                                  "$RELAY_TOKEN for publish)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")

    serve = commands.add_parser("serve", help="run the relay under gunicorn's gevent worker",
                                description="Run gunicorn with the gevent worker and relay's settings "
                                            "(RELAY_CONFIG, RELAY_* variables).")
    serve.add_argument("--bind", metavar="HOST:PORT", help="address to listen on, over server.bind "
                                                           "(default: $RELAY_BIND, the file's, or 127.0.0.1:8000)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check-config", help="validate the configuration; exit 1 naming each problem",
                                description="Build the app as the server would, from RELAY_CONFIG and "
                                            "RELAY_* variables, and report every problem.")
    check.add_argument("--quiet", action="store_true", help="print only problems")
    check.set_defaults(func=lambda args: 0 if check_config(quiet=args.quiet) else 1)

    plugins = commands.add_parser("plugins", help="list the plugins the configured relay loads, and their hooks",
                                  description="List the plugins relay loads with this configuration "
                                              "(RELAY_CONFIG, plugins, disable_plugins and their RELAY_* "
                                              "variables), where each comes from and the hooks it "
                                              "implements. Exits 1 when a plugin cannot load.")
    plugins.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print JSON instead of a table")
    plugins.set_defaults(func=_plugins)

    publish = commands.add_parser("publish", help="publish one event to a running relay over HTTP",
                                  description="POST one event to /events/CHANNEL of a running relay.")
    publish.add_argument("channel", metavar="CHANNEL", help="the channel to publish to")
    publish.add_argument("event", metavar="EVENT", help="the event name (the SSE event: field)")
    publish.add_argument("data", metavar="DATA", nargs="?",
                         help="the event's data as JSON, e.g. '{\"emote\": \"wave\"}' or '\"text\"' "
                              "(omitted: no data)")
    publish.add_argument("--raw", action="store_true", help="send DATA as a string, whatever it holds")
    publish.add_argument("--id", help="the event id (default: the relay assigns one)")
    add_client_options(publish, token_help="bearer token sent as Authorization: Bearer "
                                           "(default: $RELAY_TOKEN)")
    publish.set_defaults(func=_publish)

    # Plugins add their own commands (the webhook sink adds `relay webhooks`): the core imports none.
    try:
        _configured_plugins().hook.relay_cli_commands(commands=commands)
    except (ConfigError, PluginLoadError, OSError) as exc:
        # The core commands still work; check-config and plugins report the problem in full.
        parser.unavailable = f"plugin commands are unavailable: {exc}"
    return parser


def _configured_plugins():
    """The plugins the server would load: its configuration file and RELAY_* variables decide."""
    from relay.app import _early_list
    from relay.config import raw_config
    from relay.plugins import get_plugin_manager

    raw, _ = raw_config(None)
    return get_plugin_manager(_early_list(raw, "plugins"), _early_list(raw, "disable_plugins"))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors also say why plugin commands are missing, if they are."""

    unavailable = ""

    def error(self, message: str):
        super().error(f"{message} ({self.unavailable})" if self.unavailable else message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `relay plugins | head`: the reader left, which is not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 1


if __name__ == "__main__":
    sys.exit(main())
