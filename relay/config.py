"""Configuration: a declared schema, a TOML file, ``RELAY_*`` environment overrides.

Every key relay reads is declared as an :class:`Option` inside a :class:`Section`. The core
declares its own sections; plugins declare theirs through the ``relay_config_sections`` hook.
Loading validates everything at start-up and raises :class:`ConfigError` naming each bad key,
the value found and what is allowed, so a typo never becomes a silent default.

Precedence, lowest first:

* ``create_app()`` (the server, ``relay check-config``): option defaults, the TOML file named by
  ``RELAY_CONFIG`` (or a path given to ``create_app``), ``RELAY_*`` environment variables.
* ``create_app({...})`` with a dict: option defaults, ``RELAY_*`` environment variables, the
  dict. An explicit dict wins over the environment, as Flask's test config does; the environment
  still fills the keys the dict does not set.
* Under gunicorn, the ``[server]`` values gunicorn actually runs with (its command line, e.g.
  ``-b``, wins over the file and the environment) replace ``[server]`` in the worker's app:
  ``relay.gunicorn_config`` hands them over (``create_app(server=...)``), not the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["ConfigError", "Option", "Section", "Config", "load_config", "read_toml", "CORE_SECTIONS",
           "SERVER_SECTION", "check_networks", "server_settings"]


class ConfigError(ValueError):
    """Raised when the configuration cannot be used. ``problems`` lists one message per key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid relay configuration:\n  - " + "\n  - ".join(problems))


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


@dataclass(frozen=True)
class Option:
    """One configuration key.

    :param name: the key inside its section.
    :param type: ``str``, ``int``, ``float``, ``bool`` or ``list``.
    :param default: the value used when neither file nor environment sets it.
    :param help: one line for the configuration reference.
    :param env: environment variable that overrides the file (lists are comma-separated).
    :param choices: the only values allowed.
    :param min: the smallest number allowed (numbers only).
    :param item: for lists, the type of each item, or a :class:`Section` for an array of tables.
    :param check: extra validation, returning an error text or ``None``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    env: str | None = None
    choices: tuple | None = None
    min: float | None = None
    item: Any = str
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class Section:
    """A table of options, addressed by a dotted path (``""`` is the top level)."""

    path: str
    options: tuple[Option, ...]
    help: str = ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


class Config:
    """Validated configuration: ``config.section("sinks.sse")["heartbeat"]``."""

    def __init__(self, values: dict[str, dict[str, Any]], present: set[str], source: str):
        self._values = values
        self._present = present
        self.source = source  # where the file came from, for messages

    def section(self, path: str) -> dict[str, Any]:
        return self._values[path]

    def is_set(self, path: str) -> bool:
        """True when the file or environment set anything in section ``path``."""
        return path in self._present

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {path: dict(values) for path, values in self._values.items()}


def check_networks(networks: list[str]) -> str | None:
    """An ``Option(check=…)`` for lists of IP addresses or CIDR networks."""
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            return f"{network!r} is not an IP address or a CIDR network like '10.0.0.0/8' or '::1/128'"
    return None


def _check_origins(origins: list[str]) -> str | None:
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            return f"{origin!r} is not '*' or an origin like 'https://example.com'"
    return None


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")  # what a Redis URL starts with, wherever one is taken


def _check_backbone(url: str) -> str | None:
    if url == "memory" or url.startswith(REDIS_URL_SCHEMES + ("redis+cluster://",)):
        return None
    return (f"{url!r} is not allowed; allowed: 'memory', a Redis URL ('redis://host:port/db') or a Redis "
            "Cluster's seed nodes ('redis+cluster://host:port[,host:port…]')")


def _check_bind(binds: list[str]) -> str | None:
    if not binds:
        return "name at least one address, like '127.0.0.1:8000'"
    return None


# gunicorn's settings. relay.gunicorn_config reads them with server_settings() (the arbiter must
# not build the app); the app sees the values gunicorn actually uses (see create_app's ``server``).
SERVER_SECTION = Section(
    "server",
    (
        Option("bind", list, ["127.0.0.1:8000"], "addresses to listen on: HOST:PORT, [IPv6]:PORT or unix:PATH; "
               "publishing open to anyone is refused on any but a loopback address (see auth)",
               env="RELAY_BIND", check=_check_bind),
        Option("workers", int, 1, "worker processes; more than one needs a shared backbone (Redis)",
               env="RELAY_WORKERS", min=1),
        Option("worker_connections", int, 10100, "connections one worker accepts: streams up to "
               "sinks.sse.max_connections, and sinks.sse.reserved_connections kept free for /healthz, "
               "/metrics and publishing", env="RELAY_WORKER_CONNECTIONS", min=1),
        Option("graceful_timeout", int, 10, "seconds a stopping worker has to end its streams and finish "
               "its requests before it is killed", env="RELAY_GRACEFUL_TIMEOUT", min=0),
    ),
    "gunicorn's settings, for `relay serve` and `gunicorn -c python:relay.gunicorn_config`. gunicorn's own "
    "command-line options (`-b`, `-w`, `--worker-connections`, `--graceful-timeout`; `relay serve --bind`) "
    "win over them, and the app's checks see the values gunicorn actually uses.",
)


CORE_SECTIONS = (
    Section(
        "",
        (
            Option("backbone", str, "memory", "where events meet: 'memory' (this process only, one worker) or "
                   "'redis://host:port/db' (Redis Streams, any number of workers and hosts)",
                   env="RELAY_BACKBONE", check=_check_backbone),
            Option("history_size", int, 1000, "events kept per channel for Last-Event-ID resume",
                   env="RELAY_HISTORY_SIZE", min=0),
            Option("history_bytes", int, 1 << 20, "bytes of resume history kept per channel; the oldest "
                   "events go first", env="RELAY_HISTORY_BYTES", min=1024),
            Option("history_total_bytes", int, 256 << 20, "bytes of resume history kept per worker, all channels "
                   "together; the least recently published channels lose events first",
                   env="RELAY_HISTORY_TOTAL_BYTES", min=65536),
            Option("max_body_size", int, 65536, "largest accepted publish body, in bytes",
                   env="RELAY_MAX_BODY_SIZE", min=1),
            Option("body_timeout", float, 10.0, "seconds a request body may take to arrive in full; "
                   "slower gets 408", env="RELAY_BODY_TIMEOUT", min=0.1),
            Option("cors_origins", list, [], "origins allowed to publish and stream from a browser ('*' for any)",
                   env="RELAY_CORS_ORIGINS", check=_check_origins),
            Option("data_dir", str, "data", "directory for files plugins keep", env="RELAY_DATA_DIR"),
            Option("plugins", list, [], "extra plugin modules to load by import name (no packaging needed)",
                   env="RELAY_PLUGINS"),
            Option("disable_plugins", list, [], "plugin names not to load", env="RELAY_DISABLE_PLUGINS"),
            Option("hook_timeout", float, 5.0, "seconds a plugin's per-event or health hook may take before "
                   "it is interrupted and reported", env="RELAY_HOOK_TIMEOUT", min=0.01),
            Option("trace_plugins", bool, False, "log every plugin hook call with its plugins and duration "
                   "(logger relay.trace)", env="RELAY_TRACE_PLUGINS"),
            Option("log_format", str, "plain", "log lines as plain text or one JSON object each",
                   env="RELAY_LOG_FORMAT", choices=("plain", "json")),
            Option("log_level", str, "info", "logging level", env="RELAY_LOG_LEVEL",
                   choices=("debug", "info", "warning", "error")),
            Option("access_log", str, "off", "one line per request on standard output, written when it ends "
                   "(a stream when it closes); 'combined' is the Apache/nginx format plus the duration",
                   env="RELAY_ACCESS_LOG", choices=("off", "json", "combined")),
        ),
        "Core settings.",
    ),
    SERVER_SECTION,
)


NAMESPACES = ("sources", "sinks", "backbones")  # tables that only hold plugins' sections


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a :class:`ConfigError` that names the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"config file {str(path)!r} (RELAY_CONFIG) does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {str(path)!r} is not valid TOML: {exc}"]) from None


def raw_config(config: Mapping[str, Any] | str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """The unvalidated tables from ``config`` (a dict or a path) or from ``RELAY_CONFIG``."""
    if config is None:
        path = os.environ.get("RELAY_CONFIG")
        return (read_toml(path), path) if path else ({}, "defaults")
    if isinstance(config, (str, os.PathLike)):
        return read_toml(config), str(config)
    return dict(config), "the config passed to create_app"


def _parse_env(option: Option, text: str) -> Any:
    """Turn an environment string into the option's type; leave bad text for validation."""
    if option.type is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    if option.type is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if option.type in (int, float):
        try:
            return option.type(text)
        except ValueError:
            return text
    return text


def _type_ok(expected: Any, value: Any) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _validate(option: Option, key: str, value: Any, origin: str, problems: list[str]) -> Any:
    where = f" (from {origin})" if origin else ""
    if not _type_ok(option.type, value):
        problems.append(f"{key}: expected {_TYPE_NAMES.get(option.type, option.type.__name__)}, "
                        f"got {value!r}{where}")
        return option.default
    if option.choices is not None and value not in option.choices:
        allowed = ", ".join(repr(c) for c in option.choices)
        problems.append(f"{key}: {value!r} is not allowed{where}; allowed: {allowed}")
        return option.default
    if option.min is not None and value < option.min:
        problems.append(f"{key}: {value!r} is too small{where}; allowed: {option.min} or more")
        return option.default
    if option.type is float:
        value = float(value)
    if option.type is list:
        value = _validate_items(option, key, value, origin, problems)
    if option.check is not None:
        error = option.check(value)
        if error:
            problems.append(f"{key}: {error}{where}")
    return value


def _validate_items(option: Option, key: str, items: list, origin: str, problems: list[str]) -> list:
    result = []
    for index, item in enumerate(items):
        item_key = f"{key}[{index}]"
        if isinstance(option.item, Section):
            if not isinstance(item, dict):
                problems.append(f"{item_key}: expected a table, got {item!r}")
                continue
            result.append(_validate_table(option.item, item, item_key, origin, problems))
        elif not _type_ok(option.item, item):
            problems.append(f"{item_key}: expected {_TYPE_NAMES.get(option.item, 'a value')}, got {item!r}")
        else:
            result.append(item)
    return result


def _unknown(key: str, name: str, known: list[str]) -> str:
    guess = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{key}: unknown key{hint}; allowed: {', '.join(sorted(known)) or 'none'}"


def _validate_table(section: Section, table: dict, prefix: str, origin: str, problems: list[str]) -> dict:
    values = {}
    names = [o.name for o in section.options]
    for name in table:
        if name not in names:
            problems.append(_unknown(f"{prefix}.{name}" if prefix else name, name, names))
    for option in section.options:
        key = f"{prefix}.{option.name}" if prefix else option.name
        if option.name in table:
            values[option.name] = _validate(option, key, table[option.name], origin, problems)
        else:
            values[option.name] = _copy(option.default)
    return values


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def load_config(raw: Mapping[str, Any], sections: list[Section], source: str = "defaults",
                environ: Mapping[str, str] | None = None, *, explicit: bool = False,
                server: Mapping[str, Any] | None = None) -> Config:
    """Validate ``raw`` tables against ``sections`` and apply environment overrides.

    :param explicit: ``raw`` is a dict given to ``create_app``: its keys win over the environment
        (which still fills the others). Otherwise (a file) the environment wins.
    :param server: the ``[server]`` values the server actually runs with (gunicorn's, after its
        command line); they replace whatever the file and environment say.
    :raises ConfigError: listing every unknown key, wrong type and bad value at once.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    by_path = {s.path: s for s in sections}
    values: dict[str, dict[str, Any]] = {}
    present: set[str] = set()
    given: set[tuple[str, str]] = set()  # (section, key) set by raw

    # Walk the file's tables: every table must be a declared section or lead to one.
    def walk(table: Mapping[str, Any], prefix: str) -> None:
        section = by_path.get(prefix)
        own = {}
        for name, value in table.items():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict) and (section is None or section.option(name) is None):
                if path in by_path or path in NAMESPACES or any(p.startswith(path + ".") for p in by_path):
                    walk(value, path)
                else:
                    known = sorted({p[len(prefix) + 1 if prefix else 0:].split(".")[0]
                                    for p in by_path if p and (not prefix or p.startswith(prefix + "."))})
                    guess = difflib.get_close_matches(name, known, n=1)
                    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                    problems.append(f"[{path}]: unknown section{hint}; no loaded plugin reads it"
                                    + (f"; known here: {', '.join(known)}" if known else ""))
            else:
                own[name] = value
        if section is None:
            for name in own:
                path = f"{prefix}.{name}" if prefix else name
                problems.append(f"{path}: unknown key; [{prefix}] holds only sections")
            return
        if own:
            present.add(prefix)
        given.update((prefix, name) for name in own)
        values[prefix] = _validate_table(section, own, prefix, f"{source}", problems)

    walk(raw, "")
    for section in sections:
        if section.path not in values:
            values[section.path] = {o.name: _copy(o.default) for o in section.options}
        for option in section.options:
            if explicit and (section.path, option.name) in given:
                continue  # create_app({...}) wins over the environment
            if option.env and option.env in environ:
                key = f"{section.path}.{option.name}" if section.path else option.name
                parsed = _parse_env(option, environ[option.env])
                values[section.path][option.name] = _validate(option, key, parsed, option.env, problems)
                present.add(section.path)
    if server and SERVER_SECTION.path in values:
        for name, value in server.items():
            option = SERVER_SECTION.option(name)
            if option is None:
                problems.append(_unknown(f"server.{name}", name, [o.name for o in SERVER_SECTION.options]))
                continue
            values[SERVER_SECTION.path][name] = _validate(option, f"server.{name}", value, "the server", problems)
    if problems:
        raise ConfigError(problems)
    return Config(values, present, source)


def server_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``[server]`` section alone, from the ``RELAY_CONFIG`` file and ``RELAY_*`` variables.

    What gunicorn's arbiter reads (relay.gunicorn_config) without building the app or importing
    any plugin; the rest of the file is checked by ``relay check-config``.

    :raises ConfigError: naming each bad key, as for the whole configuration.
    """
    raw, source = raw_config(None)
    table = raw.get(SERVER_SECTION.path, {})
    if not isinstance(table, dict):
        raise ConfigError([f"server: expected a table ([server]), got {table!r} (from {source})"])
    settings = load_config({SERVER_SECTION.path: table}, [SERVER_SECTION], source, environ)
    return settings.section(SERVER_SECTION.path)
