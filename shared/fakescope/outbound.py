"""The outbound guard: where fakescope may open a connection on a caller's say-so.

Webhooks POST to a tenant's ``callback_url`` and workers fetch image URLs a tenant sends: both are
requests an outsider aims. Every address a host resolves to must be globally routable (no loopback,
private, shared, link-local or metadata, multicast, or IPv6 forms that carry one) unless its network
is allowed by configuration; the port must be an allowed one; and the connection then goes to the
address that was checked (:func:`pinned_url`), so a second DNS answer cannot move it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "OutboundURLError", "Target", "pinned_url", "resolve_target"]


class OutboundURLError(ValueError):
    """The URL is not one fakescope will connect to; the message says why."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(allowed: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(n.strip(), strict=False) for n in allowed if n.strip()]


def _embedded_v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    # IPv6 forms that carry an IPv4 destination: ::ffff:127.0.0.1, 6to4 (2002:7f00:1::1 is
    # 127.0.0.1) and Teredo. The carried address decides where the packet really goes.
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable (``is_global``: not loopback, private, link-local, shared 100.64.0.0/10,
    documentation, benchmarking or reserved), and so is any IPv4 address it carries."""
    return ip.is_global and not ip.is_multicast and all(_public(v4) for v4 in _embedded_v4(ip))


DEFAULT_PORTS = (80, 443)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, all of them allowed) and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    explicit_port: bool
    target: str  # path and query
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


def resolve_target(
    url: str,
    allowed_networks: Sequence[str] = (),
    resolve: bool = True,
    allowed_ports: Sequence[int] = DEFAULT_PORTS,
    *,
    what: str = "url",
    schemes: Sequence[str] = ("http", "https"),
    error: type[OutboundURLError] = OutboundURLError,
) -> Target:
    """The :class:`Target` of ``url`` if fakescope may connect to it, else ``error`` saying why
    (messages name the URL as ``what``).

    Every address the host resolves to must be globally routable or inside ``allowed_networks``;
    the port must be one of ``allowed_ports`` unless every address is inside ``allowed_networks``
    (an operator who allows an internal host decides its port too). ``resolve=False`` skips the
    DNS lookup (a name is then not checked and has no addresses).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise error(f"{what} is not a valid URL: {e}") from None
    if parts.scheme not in schemes:
        raise error(f"{what} must be an {' or '.join(schemes)} URL")
    if not parts.hostname:
        raise error(f"{what} has no host")
    if parts.username or parts.password:
        raise error(f"{what} must not carry credentials")
    host = parts.hostname
    if len(host) > 253 or any(not 0 < len(label) <= 63 for label in host.rstrip(".").split(".")):
        raise error(f"{what} host is not a valid name")
    networks = _parse_networks(allowed_networks)
    effective_port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return Target(url, parts.scheme, host, effective_port, port is not None, target, ())
        try:
            infos = socket.getaddrinfo(host, effective_port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise error(f"{what} host does not resolve: {host}") from e
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    inside = [any(ip in n for n in networks) for ip in addresses]
    for ip, ok in zip(addresses, inside, strict=True):
        if not ok and not _public(ip):
            raise error(f"{what} points at a non-public address ({ip}); not allowed")
    if port is not None and port not in allowed_ports and not all(inside):
        allowed = ", ".join(str(p) for p in allowed_ports)
        raise error(f"{what} port {port} is not allowed (allowed: {allowed})")
    return Target(url, parts.scheme, host, effective_port, port is not None, target, tuple(addresses))


def pinned_url(target: Target) -> tuple[str, dict[str, str], dict[str, str]]:
    """``(url, headers, extensions)`` for httpx that connect to the first checked address of ``target``
    while keeping the URL's host in the Host header and as the TLS server name (certificates are
    verified against it)."""
    if not target.addresses:
        raise OutboundURLError("host was not resolved")
    ip = target.addresses[0]
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    host_header = target.host if not target.explicit_port else f"{target.host}:{target.port}"
    if ":" in target.host and not target.host.startswith("["):
        host_header = f"[{target.host}]" + (f":{target.port}" if target.explicit_port else "")
    url = f"{target.scheme}://{netloc}:{target.port}{target.target}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return url, {"Host": host_header}, extensions
