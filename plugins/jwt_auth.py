"""JWT authorisation (PyJWT): who may publish to and subscribe to which channels.

Off until ``[auth]`` has a key. Then publishing needs a token, and streams need one unless every
channel asked for is listed in ``public_channels``. A token's claim ``relay`` lists channel
globs: ``{"relay": {"publish": ["demo"], "subscribe": ["demo", "room:*"]}, "exp": …}``.
Browsers send the token in a cookie or an ``access_token`` query parameter (EventSource cannot
set headers); services send ``Authorization: Bearer <token>``.

Secure default: a relay bound to a non-loopback address with no key refuses to start unless
``allow_anonymous_publish = true`` says that open publishing is intended.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import jwt
from flask import Request

from relay import hookimpl
from relay.auth import Decision, matches
from relay.config import ConfigError, Option, Section

SECTION = "auth"


def _check_public_key(value: str) -> str | None:
    if not value:
        return None
    try:
        jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(_pem(value))
    except (OSError, ValueError, TypeError, jwt.exceptions.InvalidKeyError) as exc:
        return f"is not an RSA public key in PEM form, nor a file holding one ({exc})"
    return None


def _pem(value: str) -> str:
    """``jwt_public_key`` holds the PEM text itself or the path of a file with it."""
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("jwt_key", str, "", "HS256 secret that signs tokens; setting it turns authorisation on",
               env="RELAY_JWT_KEY"),
        Option("jwt_public_key", str, "", "RS256 public key (PEM text or a file path); instead of jwt_key",
               env="RELAY_JWT_PUBLIC_KEY", check=_check_public_key),
        Option("public_channels", list, [], "channel globs anyone may subscribe to without a token",
               env="RELAY_PUBLIC_CHANNELS"),
        Option("allow_anonymous_publish", bool, False, "allow a relay without a key on a non-loopback address",
               env="RELAY_ALLOW_ANONYMOUS_PUBLISH"),
        Option("cookie", str, "relay_token", "name of the cookie browsers may carry the token in"),
        Option("leeway", float, 0.0, "seconds of clock skew tolerated on exp and nbf", min=0),
    ), "Authorisation with JSON Web Tokens.")]


class Verifier:
    def __init__(self, settings: dict):
        self.settings = settings
        if settings["jwt_public_key"]:
            self.key, self.algorithms = _pem(settings["jwt_public_key"]), ["RS256"]
        else:
            self.key, self.algorithms = settings["jwt_key"], ["HS256"]

    def token(self, request: Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(self.settings["cookie"]) or request.args.get("access_token")

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
        token = self.token(request)
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
    binds = [b for b in os.environ.get("RELAY_BIND", "").split(",") if b]
    exposed = [b for b in binds if not _is_loopback(b)]
    if exposed and not keyed and not settings["allow_anonymous_publish"]:
        raise ConfigError([f"auth: relay would listen on {', '.join(exposed)} with publishing open to anyone; "
                           "set auth.jwt_key (or jwt_public_key), or allow_anonymous_publish = true "
                           "(RELAY_ALLOW_ANONYMOUS_PUBLISH=1) if that is intended"])
    if keyed:
        relay.extensions["jwt_auth"] = Verifier(settings)


@hookimpl
def relay_authorize(relay, request, action, channels):
    verifier = relay.extensions.get("jwt_auth")
    return verifier.decide(request, action, channels) if verifier else None
