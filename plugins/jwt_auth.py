"""JWT authorisation (PyJWT): who may publish to and subscribe to which channels.

Off until ``[auth]`` has a key. Then publishing needs a token, and streams need one unless every
channel asked for is listed in ``public_channels``. A token's claim ``relay`` lists channel
globs: ``{"relay": {"publish": ["demo"], "subscribe": ["demo", "room:*"]}, "exp": …}``.
Browsers send the token in a cookie or an ``access_token`` query parameter (EventSource cannot
set headers); services send ``Authorization: Bearer <token>``.

Secure default: a relay bound to a non-loopback address with no key refuses to start unless
``allow_anonymous_publish = true`` says that open publishing is intended.

A cookie is sent by the browser whatever page made the request, so a token from the cookie may
publish only from a page of the relay's own origin or of one listed in ``cors_origins`` (checked
with ``Origin``, or ``Sec-Fetch-Site: same-origin`` when a browser sends no ``Origin``).
Services, which send no ``Origin``, put the token in ``Authorization: Bearer`` instead.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from pathlib import Path

import jwt
from flask import Request

from relay.api import ConfigError, Decision, Option, Section, hookimpl, matches

SECTION = "auth"
MIN_HS_KEY_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output


def _check_public_key(value: str) -> str | None:
    if not value:
        return None
    try:
        jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(_pem(value))
    except (OSError, ValueError, TypeError, jwt.exceptions.InvalidKeyError) as exc:
        return f"is not an RSA public key in PEM form, nor a file holding one ({exc})"
    return None


def _check_hs_key(value: str) -> str | None:
    # Never quote the key itself: the message goes to logs.
    size = len(value.encode("utf-8"))
    if value and size < MIN_HS_KEY_BYTES:
        return (f"is {size} bytes long; an HS256 key needs at least {MIN_HS_KEY_BYTES} random bytes "
                "(RFC 7518 3.2), e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return None


def _pem(value: str) -> str:
    """``jwt_public_key`` holds the PEM text itself or the path of a file with it."""
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("jwt_key", str, "", "HS256 secret that signs tokens (32 bytes or more); setting it turns "
               "authorisation on", env="RELAY_JWT_KEY", check=_check_hs_key),
        Option("jwt_public_key", str, "", "RS256 public key (PEM text or a file path); instead of jwt_key",
               env="RELAY_JWT_PUBLIC_KEY", check=_check_public_key),
        Option("public_channels", list, [], "channel globs anyone may subscribe to without a token",
               env="RELAY_PUBLIC_CHANNELS"),
        Option("allow_anonymous_publish", bool, False, "allow a relay without a key on a non-loopback address",
               env="RELAY_ALLOW_ANONYMOUS_PUBLISH"),
        Option("cookie", str, "relay_token", "name of the cookie browsers may carry the token in"),
        Option("leeway", float, 0.0, "seconds of clock skew tolerated on exp and nbf", min=0),
    ), "Authorisation with JSON Web Tokens.")]


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin or URL, default ports filled in; None if unusable."""
    try:
        parts = urllib.parse.urlsplit(url.strip().lower())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme, parts.hostname, port) if parts.scheme and parts.hostname else None


class Verifier:
    def __init__(self, settings: dict, cors_origins: list[str] = ()):
        self.settings = settings
        # "*" lets any page read streams; it never lets any page publish with the cookie.
        self.trusted_origins = {_origin(o) for o in cors_origins if o != "*"} - {None}
        if settings["jwt_public_key"]:
            self.key, self.algorithms = _pem(settings["jwt_public_key"]), ["RS256"]
        else:
            self.key, self.algorithms = settings["jwt_key"], ["HS256"]

    def token(self, request: Request) -> tuple[str | None, str]:
        """The token and where it came from: ``"header"``, ``"cookie"`` or ``"query"``."""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip(), "header"
        cookie = request.cookies.get(self.settings["cookie"])
        if cookie:
            return cookie, "cookie"
        return request.args.get("access_token"), "query"

    def from_trusted_page(self, request: Request) -> bool:
        """True when a browser says the request comes from the relay's own origin (as reached:
        scheme and Host) or from one listed in ``cors_origins``."""
        origin = request.headers.get("Origin")
        if origin is None:  # browsers that send no Origin on a POST do send Sec-Fetch-Site
            return request.headers.get("Sec-Fetch-Site", "").lower() == "same-origin"
        sent = _origin(origin)  # "null" (sandboxed pages, some redirects) gives None: refused
        return sent is not None and (sent == _origin(f"{request.scheme}://{request.host}")
                                     or sent in self.trusted_origins)

    def claims(self, token: str) -> dict | str:
        """The token's ``relay`` claim, or a message saying why the token is unusable."""
        try:
            payload = jwt.decode(token, self.key, algorithms=self.algorithms, leeway=self.settings["leeway"],
                                 options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            return "the token has expired"
        except jwt.InvalidSignatureError:
            return "the token's signature is invalid"
        except jwt.MissingRequiredClaimError as exc:
            return f"the token is missing the {exc.claim!r} claim"
        except jwt.InvalidAlgorithmError:
            return f"the token is not signed with {', '.join(self.algorithms)}"
        except jwt.DecodeError as exc:
            return f"the token is malformed: {exc}"
        except jwt.InvalidTokenError as exc:
            return f"the token is invalid: {exc}"
        claim = payload.get("relay")
        if not isinstance(claim, dict) or not all(
                isinstance(claim.get(k, []), list) and all(isinstance(g, str) for g in claim.get(k, []))
                for k in ("publish", "subscribe")):
            return 'the token has no valid "relay" claim ({"publish": [globs], "subscribe": [globs]})'
        return {"sub": payload.get("sub"), **claim}

    def decide(self, request: Request, action: str, channels: list[str]) -> Decision:
        token, source = self.token(request)
        if action == "publish" and source == "cookie" and not self.from_trusted_page(request):
            origin = request.headers.get("Origin")
            return Decision.deny(403, f"a token from the {self.settings['cookie']!r} cookie may publish only from "
                                      "a page of this relay's own origin or of one in cors_origins; Origin is "
                                      f"{'absent' if origin is None else repr(origin)}; other clients send the "
                                      "token as Authorization: Bearer")
        public_channels = self.settings["public_channels"] if action == "subscribe" else []
        public = all(matches(c, public_channels) for c in channels)
        if token is None:
            if public:
                return Decision.allow()
            return Decision.deny(401, f"a token is required to {action} to {', '.join(map(repr, channels))}")
        claims = self.claims(token)
        if isinstance(claims, str):
            return Decision.deny(401, claims)
        allowed = claims.get(action, [])
        refused = [c for c in channels if not matches(c, allowed) and not matches(c, public_channels)]
        if refused:
            return Decision.deny(403, f"the token may not {action} to {', '.join(map(repr, refused))}; "
                                      f"it allows {action} to {allowed}")
        return Decision.allow(claims.get("sub") or f"token:{hash(token)}")


def _is_loopback(bind: str) -> bool:
    if bind.startswith("unix:"):
        return True
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0: reachable from elsewhere


@hookimpl
def relay_init_app(app, relay):
    settings = relay.config.section(SECTION)
    if settings["jwt_key"] and settings["jwt_public_key"]:
        raise ConfigError(["auth.jwt_public_key: set either jwt_key (HS256) or jwt_public_key (RS256), not both"])
    keyed = bool(settings["jwt_key"] or settings["jwt_public_key"])
    binds = relay.config.section("server")["bind"]  # under gunicorn, what it listens on (its -b wins)
    exposed = [b for b in binds if not _is_loopback(b)]
    if exposed and not keyed and not settings["allow_anonymous_publish"]:
        raise ConfigError([f"auth: relay would listen on {', '.join(exposed)} with publishing open to anyone; "
                           "set auth.jwt_key (or jwt_public_key), or allow_anonymous_publish = true "
                           "(RELAY_ALLOW_ANONYMOUS_PUBLISH=1) if that is intended"])
    if keyed:
        relay.extensions["jwt_auth"] = Verifier(settings, relay.config.section("")["cors_origins"])


@hookimpl
def relay_authorize(relay, request, action, channels):
    verifier = relay.extensions.get("jwt_auth")
    return verifier.decide(request, action, channels) if verifier else None
