"""The live reactions demo: ``GET /`` serves a page where a room sends emotes and votes.

The page is plain HTML, CSS and JavaScript served by relay (no build step, no CDN). It publishes
emotes through relay's own HTTP API (``POST /events/room:<room>``) and listens with the
browser's ``EventSource`` to named events on the room's channel:

``emote``  ``{"emote": "dolphin", ...}`` (or just ``"dolphin"``): animates on every open page.
``votes``  ``{"room", "poll", "totals": {option: n}, "total": n}``: the poll's current totals.

Votes are tallied here, one tally per room and poll, in memory or in Redis
(``[demo] tallies = "redis://..."``; by default the backbone's Redis when there is one), and
every vote publishes a ``votes`` event with the totals. Each browser votes once per poll: the
votes endpoint gives it a random voter id in an HttpOnly cookie and keeps, next to each tally,
which option each voter chose; a second vote is refused with ``409 already_voted``. ``GET /demo/api/rooms/<room>/polls/<poll>`` answers the current totals, which the page
fetches on every (re)connect and after a ``relay-missed`` event, so it never shows stale numbers.

Turn the page off with ``disable_plugins = ["demo"]``.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from flask import Blueprint, jsonify, request, send_from_directory

from relay.api import REDIS_URL_SCHEMES, BackboneUnavailable, Event, Option, Section, hookimpl, loads_json

SECTION = "demo"
STATIC = Path(__file__).parent / "static"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # room and poll names: safe in a channel, a key and a URL
VOTE_FIELDS = ("option",)
VOTER_COOKIE = "relay_demo_voter"  # HttpOnly: the page's script never sees it, the browser sends it
VOTER_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")  # what we issue (token_urlsafe(18) is 24 characters)
VOTER_COOKIE_AGE = 365 * 24 * 3600
MAX_MEMORY_TALLIES = 10_000  # (room, poll) pairs kept in memory; the least recently used go first

log = logging.getLogger("relay.demo")


def _check_tallies(value: str) -> str | None:
    if value in ("", "memory") or value.startswith(REDIS_URL_SCHEMES):
        return None
    return f"{value!r} is not 'memory', a Redis URL (redis://host:port/db, rediss://…, unix://…) or empty"


def _check_options(options: list[str]) -> str | None:
    if not options:
        return "a poll needs at least one option"
    if len(options) > 12:
        return f"{len(options)} options; the limit is 12"
    if len(set(options)) != len(options):
        return "options must be unique"
    for option in options:
        if not option.strip() or len(option) > 40 or re.search(r"[\x00-\x1f]", option):
            return f"{option!r} is not 1 to 40 printable characters"
    return None


def _check_name(value: str) -> str | None:
    return None if NAME.fullmatch(value) else f"{value!r} is not 1 to 64 of A-Z a-z 0-9 _ . -"


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("tallies", str, "", "where vote tallies live: 'memory' (this process), a Redis URL, or empty "
               "for the backbone's Redis when backbone is a Redis URL, else memory",
               env="RELAY_DEMO_TALLIES", check=_check_tallies),
        Option("key_prefix", str, "relay:demo:votes:", "prefix of the Redis hash keys holding tallies",
               env="RELAY_DEMO_KEY_PREFIX"),
        Option("channel_prefix", str, "room:", "a room's channel is this prefix followed by the room name",
               check=lambda v: None if len(v) <= 64 and not re.search(r"[\r\n\x00]", v) else
               "must be at most 64 characters without CR, LF or NUL"),
        Option("default_room", str, "lobby", "the room a page joins when none is given",
               check=_check_name),
        Option("question", str, "What should relay carry next?", "the poll's question"),
        Option("options", list, ["Redis", "Kafka", "Webhooks"], "the poll's options", check=_check_options),
    ), "The live reactions demo page served at /.")]


# -- tallies --------------------------------------------------------------------------------------

class TalliesUnavailable(RuntimeError):
    """The tally store cannot be reached; the vote was not counted."""


class AlreadyVoted(Exception):
    """This voter has voted in this poll before; ``option`` is what they chose then."""

    def __init__(self, option: str):
        super().__init__(option)
        self.option = option


class MemoryTallies:
    """Tallies in this process: lost on restart, not shared between workers."""

    kind = "memory"

    def __init__(self, limit: int = MAX_MEMORY_TALLIES):
        # (room, poll) -> (option -> count, voter -> option)
        self._tallies: OrderedDict[tuple[str, str], tuple[dict[str, int], dict[str, str]]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()  # gevent-patched under gunicorn; never held across I/O

    def add(self, room: str, poll: str, option: str, voter: str) -> dict[str, int]:
        """Count ``voter``'s vote and answer the totals; :class:`AlreadyVoted` if they voted before."""
        with self._lock:
            tally, voters = self._tallies.setdefault((room, poll), ({}, {}))
            self._tallies.move_to_end((room, poll))
            if voter in voters:
                raise AlreadyVoted(voters[voter])
            voters[voter] = option
            tally[option] = tally.get(option, 0) + 1
            while len(self._tallies) > self._limit:
                self._tallies.popitem(last=False)
            return dict(tally)

    def get(self, room: str, poll: str, voter: str | None = None) -> tuple[dict[str, int], str | None]:
        """The totals, and the option ``voter`` chose (None when they have not voted)."""
        with self._lock:
            tally, voters = self._tallies.get((room, poll), ({}, {}))
            return dict(tally), voters.get(voter) if voter else None

    def health(self) -> dict:
        return {"state": "up", "tallies": "memory", "polls": len(self._tallies)}


# Atomically: record the voter's choice unless they voted before, then count it. One round trip,
# and no window in which two workers could both count the same voter.
ADD_VOTE = """
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if previous then return {0, previous} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return {1, redis.call('HGETALL', KEYS[1])}
"""


class RedisTallies:
    """Tallies in Redis hashes ``<prefix><room>:<poll>``: shared by workers, kept over restarts.

    Who voted for what is the hash ``<prefix><room>:<poll>:voters`` (voter id -> option).
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str):
        import redis

        self._errors = (redis.RedisError, OSError)
        # No connection is opened until the first command (after fork, in the worker).
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                           decode_responses=True)
        self.prefix = prefix
        self.where = _redact(url)

    def _key(self, room: str, poll: str) -> str:
        return f"{self.prefix}{room}:{poll}"

    def add(self, room: str, poll: str, option: str, voter: str) -> dict[str, int]:
        """Count ``voter``'s vote and answer the totals; :class:`AlreadyVoted` if they voted before."""
        key = self._key(room, poll)
        try:
            counted, result = self.client.eval(ADD_VOTE, 2, key, f"{key}:voters", voter, option)
        except self._errors as exc:
            raise TalliesUnavailable(f"Redis at {self.where}: {exc}") from exc
        if not counted:
            raise AlreadyVoted(result)
        return _ints(dict(zip(result[::2], result[1::2])))  # HGETALL comes back from Lua as a flat list

    def get(self, room: str, poll: str, voter: str | None = None) -> tuple[dict[str, int], str | None]:
        """The totals, and the option ``voter`` chose (None when they have not voted)."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self._key(room, poll))
            pipe.hget(f"{self._key(room, poll)}:voters", voter or "")
            totals, chosen = pipe.execute()
        except self._errors as exc:
            raise TalliesUnavailable(f"Redis at {self.where}: {exc}") from exc
        return _ints(totals), chosen if voter else None

    def health(self) -> dict:
        try:
            self.client.ping()
        except self._errors as exc:
            return {"state": "down", "tallies": self.where, "detail": str(exc)}
        return {"state": "up", "tallies": self.where}


def _ints(values: dict) -> dict[str, int]:
    totals = {}
    for key, value in values.items():
        try:
            totals[key] = int(value)
        except (TypeError, ValueError):
            log.warning("ignoring a non-integer tally %r=%r in Redis", key, value)
    return totals


def _redact(url: str) -> str:
    """The URL without its password, for logs and /healthz."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


# -- the app --------------------------------------------------------------------------------------

class Demo:
    """Per-app state: settings and the tally store."""

    def __init__(self, relay, settings: dict):
        self.relay = relay
        self.settings = settings
        self.options: list[str] = list(settings["options"])
        tallies = settings["tallies"]
        if not tallies:  # follow the backbone: shared tallies for a shared backbone
            backbone = relay.config.section("")["backbone"]
            tallies = backbone if backbone.startswith(REDIS_URL_SCHEMES) else "memory"
        self.tallies = MemoryTallies() if tallies == "memory" else RedisTallies(tallies, settings["key_prefix"])

    def channel(self, room: str) -> str:
        return f"{self.settings['channel_prefix']}{room}"

    def state(self, room: str, poll: str, counts: dict[str, int]) -> dict:
        totals = {option: counts.get(option, 0) for option in self.options}
        return {"room": room, "poll": poll, "totals": totals, "total": sum(totals.values())}


def _error(status: int, error: str, message: str, **extra):
    return jsonify({"error": error, "message": message, **extra}), status


def _refused(relay, action: str, channel: str):
    """The JSON refusal when the auth plugins deny ``action`` on the room's channel, else None."""
    decision = relay.authorize(request, action, [channel])
    if decision.allowed:
        return None
    return _error(decision.status, "unauthorized" if decision.status == 401 else "forbidden", decision.message)


def _voter() -> str | None:
    """The voter id this browser's cookie carries, when it is one we could have issued."""
    voter = request.cookies.get(VOTER_COOKIE, "")
    return voter if VOTER_ID.fullmatch(voter) else None


def _bad_names(room: str, poll: str):
    for field, value in (("room", room), ("poll", poll)):
        if not NAME.fullmatch(value):
            return _error(400, f"invalid_{field}", f"{field} {value[:80]!r} must be 1 to 64 characters "
                                                   "of A-Z a-z 0-9 _ . -")
    return None


@hookimpl
def relay_init_app(app, relay):
    demo = relay.extensions["demo"] = Demo(relay, relay.config.section(SECTION))
    blueprint = Blueprint("demo", __name__, static_folder=str(STATIC), static_url_path="/demo/static")

    @blueprint.get("/")
    def page():
        response = send_from_directory(STATIC, "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @blueprint.get("/demo/api/config")
    def config():
        return jsonify({"default_room": demo.settings["default_room"], "question": demo.settings["question"],
                        "options": demo.options, "channel_prefix": demo.settings["channel_prefix"],
                        "tallies": demo.tallies.kind})

    @blueprint.get("/demo/api/rooms/<room>/polls/<poll>")
    def poll_state(room: str, poll: str):
        bad = _bad_names(room, poll) or _refused(relay, "subscribe", demo.channel(room))
        if bad:
            return bad
        try:
            counts, chosen = demo.tallies.get(room, poll, _voter())
        except TalliesUnavailable as exc:
            log.error("cannot read tallies: %s", exc)
            return _error(503, "tallies_unavailable", f"the tally store is unavailable: {exc}")
        return jsonify({**demo.state(room, poll, counts), "your_vote": chosen})

    @blueprint.post("/demo/api/rooms/<room>/polls/<poll>/votes")
    def vote(room: str, poll: str):
        # Reading a room's tallies is subscribing to it; voting publishes on it.
        bad = _bad_names(room, poll) or _refused(relay, "publish", demo.channel(room))
        if bad:
            return bad
        if request.mimetype != "application/json":
            # As for publishing: a cross-site form cannot send this type without asking first.
            return _error(415, "unsupported_media_type", "send the vote as Content-Type: application/json")
        body = request.get_data(cache=False)
        try:
            message = loads_json(body.decode("utf-8"))  # InvalidJSON (too deep, too) is a ValueError
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(400, "invalid_json", f'the body is not UTF-8 JSON like {{"option": "…"}}: {exc}')
        if not isinstance(message, dict):
            return _error(422, "invalid_vote", f"the body must be a JSON object, got {type(message).__name__}")
        unknown = sorted(set(message) - set(VOTE_FIELDS))
        if unknown:
            return _error(422, "invalid_vote", f"unknown field(s) {', '.join(unknown)}; allowed: option")
        option = message.get("option")
        if option not in demo.options:  # also rejects a missing option and non-strings
            return _error(422, "invalid_vote",
                          f"option: {repr(option)[:80]} is not one of this poll's options" if "option" in message
                          else "option: is required", options=demo.options)
        voter = _voter()
        new_voter = voter is None
        if new_voter:  # a browser without a (valid) voter cookie gets one with this answer
            voter = secrets.token_urlsafe(18)
        try:
            counts = demo.tallies.add(room, poll, option, voter)
        except TalliesUnavailable as exc:
            log.error("cannot count a vote: %s", exc)
            return _error(503, "tallies_unavailable", f"the vote was not counted: {exc}")
        except AlreadyVoted as exc:
            return _error(409, "already_voted", f"you already voted for {exc.option} in this poll; "
                                                "one vote per browser", your_vote=exc.option)
        state = demo.state(room, poll, counts)
        try:
            # Arrived in this worker only: the backbone carries it to every worker's pages.
            published = relay.publish(Event(demo.channel(room), "votes", state, source="demo"), broadcast=True)
            answer = {**state, "your_vote": option, "event_id": published.id if published else None}
        except BackboneUnavailable as exc:
            # Counted, but not announced: pages catch up when they next fetch the tallies.
            log.warning("a vote in %s/%s was counted but not broadcast: %s", room, poll, exc)
            answer = {**state, "your_vote": option, "event_id": None, "warning": f"counted, not broadcast: {exc}"}
        response = jsonify(answer)
        if new_voter:
            response.set_cookie(VOTER_COOKIE, voter, max_age=VOTER_COOKIE_AGE, path="/demo/api/",
                                httponly=True, samesite="Lax", secure=request.is_secure)
        return response

    app.register_blueprint(blueprint)


@hookimpl
def relay_health(relay):
    demo = relay.extensions.get("demo")
    return {"demo": demo.tallies.health()} if demo else None
