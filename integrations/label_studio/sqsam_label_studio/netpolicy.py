"""Which addresses the backend may fetch images from (the outbound-request policy).

A fetch is allowed when its destination is

* Label Studio's own origin (scheme, host and port of ``LABEL_STUDIO_URL``, or of the first
  ``/setup`` hostname when that is unset), whatever address it has (it is often a loopback or
  private address);
* listed in ``SQSAM_ALLOWED_HOSTS``: a comma list of entries, each a host name (``images.lan``),
  a wildcard suffix (``*.corp.example``), an IP address (``10.1.2.3``, ``[fd00::5]``) or a network
  (``10.0.0.0/8``), optionally with ``:port`` (``images.lan:8080``, ``[::1]:9000``); a port-less
  entry allows every port;
* or a public address: every address the host name resolves to is classified with the standard
  library's :mod:`ipaddress`, and only globally routable unicast addresses pass. Loopback,
  link-local (cloud metadata at 169.254.169.254), private, shared (100.64/10), reserved,
  multicast and unspecified addresses are refused, also when they hide inside IPv6 forms
  (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64 ``64:ff9b::/96``).

The check runs on the *resolved* address, for the first URL and again after every redirect;
:mod:`sqsam_label_studio.safe_fetch` then connects to the very address it checked, so a DNS
answer that changes between check and connect (rebinding) cannot move the connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = tuple[str, str, int | None]  # scheme, lower-case host, port

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: Address) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public_address(address: str | Address) -> bool:
    """True for a globally routable unicast address (IPv6 forms that embed IPv4 are unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    for inner in _embedded_ipv4(ip):
        if not is_public_address(inner):
            return False
    if ip in _NAT64 or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None):
        return True  # a translated IPv4 address: decided by it, above
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return False
    return ip.is_global


@dataclass(frozen=True)
class AllowEntry:
    """One ``SQSAM_ALLOWED_HOSTS`` entry: a host name, a ``*.suffix`` or a network; an optional port."""

    host: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int | None, ip: Address) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip in self.network or any(inner in self.network for inner in _embedded_ipv4(ip))
        assert self.host is not None
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def parse_allowed_hosts(text: str | Iterable[str] | None) -> list[AllowEntry]:
    """``SQSAM_ALLOWED_HOSTS`` (comma list, or an iterable of entries) -> entries; ConfigError if malformed."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    entries = []
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        entries.append(_parse_entry(item, raw))
    return entries


def _parse_port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"SQSAM_ALLOWED_HOSTS entry {raw.strip()!r}: bad port {text!r}")
    return int(text)


def _parse_entry(item: str, raw: str) -> AllowEntry:
    port = None
    if item.startswith("["):  # [v6] or [v6]:port
        close = item.find("]")
        if close < 0:
            raise ConfigError(f"SQSAM_ALLOWED_HOSTS entry {raw.strip()!r}: missing ']'")
        rest = item[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"SQSAM_ALLOWED_HOSTS entry {raw.strip()!r}: expected ':port' after ']'")
            port = _parse_port(rest[1:], raw)
        item = item[1:close]
    elif item.count(":") == 1:  # host:port or v4:port (a bare IPv6 address has several colons)
        item, port_text = item.split(":")
        port = _parse_port(port_text, raw)
    try:
        return AllowEntry(network=ipaddress.ip_network(item, strict=False), port=port)
    except ValueError:
        pass
    if "/" in item or not item or any(c.isspace() for c in item):
        raise ConfigError(f"SQSAM_ALLOWED_HOSTS entry {raw.strip()!r} is not a host name, address or network")
    return AllowEntry(host=item.rstrip("."), port=port)


class FetchPolicy:
    """Decides whether one resolved destination may be fetched (see the module docstring)."""

    def __init__(self, allowed_hosts: str | Iterable[str] | None = None):
        self.entries = parse_allowed_hosts(allowed_hosts)

    def allows(self, origin: Origin, address: str | Address, trusted: Iterable[Origin] = ()) -> bool:
        """``origin`` = (scheme, host, port) of the URL; ``address`` = one address its host resolved to;
        ``trusted`` = origins allowed whatever their address (Label Studio's)."""
        if origin in set(trusted):
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        scheme, host, port = origin
        host = host.strip("[]").rstrip(".")
        if any(entry.matches(host, port, ip) for entry in self.entries):
            return True
        return is_public_address(ip)
