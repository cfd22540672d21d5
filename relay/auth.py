"""Authorisation decisions: what ``relay_authorize`` returns and what the HTTP plugins enforce."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The answer to "may this request publish/subscribe to these channels?".

    :param allowed: the verdict.
    :param status: ``401`` (no usable credentials: missing, malformed, expired, wrongly signed) or
        ``403`` (valid credentials that do not cover the channel) when denied.
    :param message: says exactly why, for the client.
    :param subject: who asked (a token's ``sub``), used to key the publish rate limit.
    """

    allowed: bool
    status: int = 200
    message: str = ""
    subject: str | None = None

    @classmethod
    def allow(cls, subject: str | None = None) -> Decision:
        return cls(True, 200, "", subject)

    @classmethod
    def deny(cls, status: int, message: str) -> Decision:
        if status not in (401, 403):
            raise ValueError(f"a denial is 401 or 403, not {status}")
        return cls(False, status, message)


def matches(channel: str, globs: list[str]) -> bool:
    """True when ``channel`` matches one of ``globs`` (``*``, ``?``, ``[…]``; case-sensitive)."""
    return any(fnmatch.fnmatchcase(channel, glob) for glob in globs)
