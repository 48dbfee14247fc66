"""Destination classification for outbound URL fetches: which addresses a user may make us reach.

Pure functions over :mod:`ipaddress` objects, no I/O. ``forbidden_reason(ip)`` names why an address
is off limits (``"loopback"``, ``"private"``, ``"metadata"``...) or returns ``None`` for a public
unicast address. IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) are judged by the
IPv4 address inside them as well, so ``::ffff:127.0.0.1`` is loopback.

``Allowlist`` holds the operator's exceptions (``CAPTION_URL_ALLOWLIST``): host names (exact, or
``*.example.org`` for sub-domains), IP addresses and CIDR blocks, each optionally restricted to one
port (``127.0.0.1:8081``, ``[::1]:8080``, ``images.internal:443``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack, Alibaba, Oracle); most are also
# link-local, listed so the refusal says what it is.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)

# Special-purpose blocks that ``ipaddress`` flags do not all cover on every Python version.
_EXTRA_BLOCKED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),  # "this network"; 0.0.0.0 connects to the local host
        ("100.64.0.0/10", "cgnat"),  # carrier-grade NAT shared space (RFC 6598)
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("64:ff9b:1::/48", "private"),  # local-use NAT64 (RFC 8215)
        ("100::/64", "reserved"),  # discard-only
        ("2001::/23", "reserved"),  # IETF protocol assignments (includes Teredo, judged below)
        ("2001:db8::/32", "reserved"),  # documentation
        ("fc00::/7", "private"),  # unique local
        ("fec0::/10", "private"),  # deprecated site-local
    )
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address
    value = int(ip)
    if 1 < value <= 0xFFFFFFFF:  # IPv4-compatible ::a.b.c.d (deprecated); :: and ::1 excluded
        return ipaddress.IPv4Address(value)
    return None


def _own_reason(ip: IPAddress) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    for net, reason in _EXTRA_BLOCKED:
        if ip.version == net.version and ip in net:
            return reason
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from, or ``None`` when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            inner_reason = _own_reason(inner)
            if inner_reason is not None:
                return f"{inner_reason} (IPv4 {inner} inside IPv6)"
            if ip.ipv4_mapped is not None or ip in _NAT64:
                return None  # a public IPv4 reached through mapping or NAT64 is as good as itself
    return _own_reason(ip)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling ``inet_aton`` accepts, as a browser's URL parser does.

    ``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` all mean 127.0.0.1. Returns ``None``
    for anything that is not such a numeric spelling (a real host name).
    """
    parts = host.rstrip(".").split(".") if host else []
    if not parts or len(parts) > 4 or not all(parts):
        return None
    values: list[int] = []
    for part in parts:
        lower = part.lower()
        try:
            if lower.startswith("0x"):
                values.append(int(lower[2:] or "0", 16))
            elif len(lower) > 1 and lower.startswith("0"):
                values.append(int(lower[1:], 8))
            else:
                if not lower.isdigit():
                    return None
                values.append(int(lower, 10))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a host name pattern or a network, optionally with one port."""

    host: str | None = None  # lower-case name; "*.example.org" matches sub-domains
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            candidates: list[IPAddress] = [ip]
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                candidates.append(ip.ipv4_mapped)
            return any(c.version == self.network.version and c in self.network for c in candidates)
        assert self.host is not None
        name = host.lower().rstrip(".")
        if self.host.startswith("*."):
            return name.endswith(self.host[1:])
        return name == self.host


def parse_allow_entry(text: str) -> AllowEntry:
    """Parse ``host``, ``host:port``, ``1.2.3.4``, ``10.0.0.0/8``, ``::1``, ``[::1]:8080``..."""
    entry = text.strip()
    if not entry:
        raise ValueError("empty allow-list entry")
    port: int | None = None
    if entry.startswith("["):
        inner, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad allow-list entry {text!r}")
        entry, port = inner, (_parse_port(rest[1:], text) if rest else None)
    elif entry.count(":") == 1:
        entry, port_text = entry.split(":")
        port = _parse_port(port_text, text)
    try:
        return AllowEntry(network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    name = entry.lower().rstrip(".")
    loose = parse_ipv4_loose(name)
    if loose is not None:
        return AllowEntry(network=ipaddress.ip_network(loose), port=port)
    label_chars = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    body = name[2:] if name.startswith("*.") else name
    if not body or not set(body) <= label_chars or "*" in body:
        raise ValueError(f"bad allow-list entry {text!r}")
    return AllowEntry(host=name, port=port)


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in allow-list entry {entry!r}")
    return int(text)


@dataclass(frozen=True)
class Allowlist:
    """The operator's exceptions to the address rules."""

    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def parse(cls, items: str | tuple[str, ...] | list[str]) -> Allowlist:
        """From a comma-separated string or a sequence of entries (blank entries ignored)."""
        raw = items.split(",") if isinstance(items, str) else list(items)
        return cls(tuple(parse_allow_entry(item) for item in raw if item.strip()))

    def allows(self, host: str, ip: IPAddress, port: int) -> bool:
        return any(entry.matches(host, ip, port) for entry in self.entries)
