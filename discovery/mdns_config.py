"""mDNS switches and counters shared by announcing and browsing (no sockets here).

``AGP_MDNS=0`` turns mDNS off (announce is a no-op, browse finds nothing at once);
``AGP_MDNS_INTERFACES`` = ``all`` (default), ``default``, ``loopback`` or a comma list of
addresses restricts zeroconf's sockets, as does an ``interfaces=`` argument.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Union

from zeroconf import InterfaceChoice

from discovery.announcement import Announcement
from mesh.errors import ConfigError

ENV_MDNS: Final = "AGP_MDNS"
ENV_INTERFACES: Final = "AGP_MDNS_INTERFACES"
ENV_ROUTER: Final = "AGP_ROUTER"
ENV_MESH: Final = "AGP_MESH"

Interfaces = Union[Sequence[str], InterfaceChoice]
TrustCheck = Callable[[Announcement], bool]


@dataclass
class MdnsStats:
    """Counters for what browsing saw and dropped (exported as metrics by the caller)."""

    seen: int = 0
    resolved: int = 0
    unresolved: int = 0
    untrusted: int = 0
    unreachable: int = 0  # trusted routers none of whose addresses answered (find_router)
    dropped: Counter[str] = field(default_factory=Counter)


STATS = MdnsStats()
"""Process-wide counters, used when a call is not given its own."""


def mdns_enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``AGP_MDNS`` is 0/false/no/off."""
    value = (os.environ if env is None else env).get(ENV_MDNS, "1").strip().lower()
    return value not in {"0", "false", "no", "off"}


def mdns_interfaces(interfaces: Interfaces | None = None,
                    env: Mapping[str, str] | None = None) -> Interfaces:
    """The zeroconf ``interfaces=`` value from the argument, else ``AGP_MDNS_INTERFACES``."""
    if isinstance(interfaces, InterfaceChoice):
        return interfaces
    if interfaces is None:
        text = (os.environ if env is None else env).get(ENV_INTERFACES, "").strip().lower()
        if text in {"", "all"}:
            return InterfaceChoice.All
        if text == "default":
            return InterfaceChoice.Default
        if text in {"lo", "loopback"}:
            return ["127.0.0.1"]
        interfaces = [part.strip() for part in text.split(",") if part.strip()]
    chosen = list(interfaces)
    if not chosen:
        raise ConfigError("mDNS interfaces: empty list")
    for addr in chosen:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"mDNS interfaces: {addr!r} is not an IP address")
    return chosen


def refuse_in_loop(what: str) -> None:
    # zeroconf's blocking calls run on its loop; from inside a running loop they would stall it.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks; inside a coroutine use its async_ variant")


def mesh_name(env: Mapping[str, str] | None = None) -> str:
    """The mesh this process belongs to (``AGP_MESH``, default ``default``)."""
    return (os.environ if env is None else env).get(ENV_MESH, "default")


def bound_addresses(endpoint: str) -> list[str] | None:
    """What a socket bound at ``endpoint`` can be reached at: its own address when bound
    to one (``tcp://127.0.0.1:7700`` is reached nowhere else), None (every address) when
    bound to all of them (``*``, ``0.0.0.0``, ``::``)."""
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("*", "0.0.0.0", "::", ""):
        return None
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:  # a name or an interface: let zeroconf pick the host's addresses
        return None


def default_addresses(interfaces: Interfaces) -> list[str]:
    """Addresses to announce: the chosen ones, or the host's LAN IPv4 (loopback if none)."""
    if not isinstance(interfaces, InterfaceChoice):
        return list(interfaces)
    import ifaddr  # zeroconf's own dependency

    found = [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if ip.is_IPv4 and isinstance(ip.ip, str)]
    lan = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return lan or ["127.0.0.1"]
