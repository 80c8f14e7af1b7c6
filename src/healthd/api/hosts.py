"""Which ``Host`` a request on the TCP listener may name: the guard against DNS rebinding.

A web page whose name an attacker re-points at 127.0.0.1 makes the victim's browser send it
requests the page may read, with ``Host: evil.example``: reads that are open on loopback would
hand it every status, config and event. So the TCP listener answers only requests that name
it: an address literal that is loopback or its own, ``localhost``, or a name the operator
lists in ``api.allowed_hosts``. Anything else is 421 (Misdirected Request), before any route.

An address literal cannot be rebound (the page's origin is the address itself), so a
wildcard listener (0.0.0.0, ::) accepts any. The Unix socket is not checked: a browser cannot
reach it, and its clients may name any host (``curl --unix-socket S http://healthd/...``).
A request without ``Host`` (HTTP/1.0, or a client that leaves it out) is served as before: no
browser sends one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_PORT = re.compile(r"[0-9]{1,5}")
# A DNS name, or what is left to compare of one: letters, digits, '-', '_' and dots.
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?")
LOCAL_NAMES = frozenset({"localhost"})


class BadHost(ValueError):
    """A Host header that is not a host (two of them, a bad port, stray characters)."""


def split_host(value: str) -> str | IpAddress:
    """The host of a ``Host`` value (``name[:port]``, ``[v6][:port]``), without its port: an
    address, or a lower-case name without a trailing dot. Raises BadHost."""
    text = value.strip()
    if text.startswith("["):
        literal, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and _PORT.fullmatch(rest[1:]))):
            raise BadHost("malformed bracketed address")
        try:
            return ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadHost("malformed IPv6 address") from None
    host, sep, port = text.rpartition(":")
    if not sep:
        host = text
    elif not _PORT.fullmatch(port):
        raise BadHost("malformed port")
    return host_value(host)


def host_value(host: str) -> str | IpAddress:
    """An address literal, or a name (lower case, one trailing dot dropped). Raises BadHost."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    if not name.isascii() or not _NAME.fullmatch(name):
        raise BadHost("not a host name")
    return name


@dataclass(frozen=True)
class HostRule:
    """What the TCP listener answers to (see the module's text)."""

    names: frozenset[str] = LOCAL_NAMES
    addresses: frozenset[IpAddress] = frozenset()
    any_address: bool = False

    @classmethod
    def for_listener(cls, listen_host: str, allowed: Iterable[str] = ()) -> HostRule:
        """The rule of a listener bound to ``listen_host``, with the operator's names."""
        names, addresses = set(LOCAL_NAMES), set()
        any_address = False
        for host in (listen_host, *allowed):
            try:
                value = host_value(host.strip("[]"))
            except BadHost:
                continue  # a listen name no Host could carry: it answers to nothing more
            if isinstance(value, str):
                names.add(value)
            elif value.is_unspecified:
                any_address = True
            else:
                addresses.add(value)
        return cls(frozenset(names), frozenset(addresses), any_address)

    def allows(self, host: str | IpAddress) -> bool:
        if isinstance(host, str):
            return host in self.names
        if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
            host = host.ipv4_mapped
        return host.is_loopback or self.any_address or host in self.addresses
