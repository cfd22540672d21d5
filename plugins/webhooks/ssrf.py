"""SSRF guard: which addresses deliveries may connect to.

The check runs on the *resolved* addresses at connect time (a hostname that resolves to
127.0.0.1 or 169.254.169.254 is refused like the literal), and the connection is then made to
the checked address itself (pinned), so a second DNS answer cannot swap it (DNS rebinding).
Every resolved address must pass: a name with one public and one private answer is refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named explicitly although the generic flags cover most of them, so a change in Python's
# tables (they moved in 3.11.4/3.12.4) cannot silently open one.
EXTRA_BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",           # "this network"
    "100.64.0.0/10",       # CGNAT (RFC 6598): not flagged private by Python
    "169.254.0.0/16",      # link-local, cloud metadata 169.254.169.254
    "192.0.0.0/24",        # IETF protocol assignments (incl. 192.0.0.192 Oracle metadata)
    "198.18.0.0/15",       # benchmarking
    "fc00::/7",            # unique local (ULA), incl. AWS metadata fd00:ec2::254
    "fe80::/10",           # link-local
    "64:ff9b::/96",        # NAT64: may map to private IPv4
    "64:ff9b:1::/48",
    "2002::/16",           # 6to4: embeds any IPv4
))


class RefusedAddress(Exception):
    """The endpoint's host is, or resolves to, an address deliveries may not reach."""


def why_blocked(address: IPAddress) -> str | None:
    """The reason ``address`` is blocked, or ``None`` for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        reason = why_blocked(address.ipv4_mapped)
        return f"{reason} (IPv4-mapped)" if reason else None
    for flag in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{flag}"):
            return flag.replace("_", "-")
    for network in EXTRA_BLOCKED:
        if address.version == network.version and address in network:
            return f"in blocked network {network}"
    if not address.is_global:
        return "not globally routable"
    return None


class AddressPolicy:
    """Blocks loopback, private, link-local, CGNAT, ULA, multicast, reserved and metadata
    addresses unless they are inside one of ``allow_networks``."""

    def __init__(self, allow_networks: Iterable[str] = ()):
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def check(self, address: IPAddress) -> None:
        """Raise :class:`RefusedAddress` unless ``address`` may be connected to."""
        plain = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
        if any(plain.version == n.version and plain in n for n in self.allowed):
            return
        reason = why_blocked(address)
        if reason:
            raise RefusedAddress(f"{address} is {reason} and not in allow_networks")

    def check_literal(self, host: str) -> None:
        """Refuse a URL whose host is a blocked IP literal (early feedback in the admin API)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: checked when it is resolved, at every connect
        self.check(address)

    def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """Resolve ``host`` and check every answer; return ``(family, address)`` to connect to."""
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host!r}: {exc}") from None
        result: list[tuple[int, str]] = []
        for family, _, _, _, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            self.check(address)  # every answer, before connecting to any
            if (family, sockaddr[0]) not in result:
                result.append((family, sockaddr[0]))
        if not result:
            raise OSError(f"{host!r} resolved to no address")
        return result
