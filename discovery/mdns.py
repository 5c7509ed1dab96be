"""mDNS/DNS-SD (RFC 6762/6763) announce and browse of mesh processes, over python-zeroconf.

A router announces ``_agp._tcp.local.`` with its ports and CURVE server key in TXT; a client
on the LAN browses to find one without configuration. What mDNS tells us is unauthenticated:
anyone on the link can announce anything, so :func:`find_router` only returns a router whose
announced key equals the key the caller pinned, or which the caller's ``trust`` check accepts
(for example "this key is enrolled"). The CURVE handshake then proves the router holds it.

Switches: ``AGP_MDNS=0`` turns mDNS off (announce is a no-op, browse finds nothing at once);
``AGP_MDNS_INTERFACES`` = ``all`` (default), ``default``, ``loopback`` or a comma list of
addresses restricts the sockets, as does the ``interfaces=`` argument. Without mDNS, a client
uses an explicit endpoint or ``AGP_ROUTER`` (see :func:`router_endpoint`).

The TXT codec and every check on what is received live in :mod:`discovery.announcement`;
this module only drives zeroconf and counts what it drops in :class:`MdnsStats`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import queue
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Union

from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discovery.announcement import (
    SERVICE_TYPE,
    Announcement,
    RouterInfo,
    announcement_txt,
    dns_label,
    host_label,
    parse_announcement,
)
from discovery.records import check_endpoint, check_z85_key
from mesh.errors import ConfigError, Malformed, TooLarge, Unavailable

log = logging.getLogger(__name__)

ENV_MDNS: Final = "AGP_MDNS"
ENV_INTERFACES: Final = "AGP_MDNS_INTERFACES"
ENV_ROUTER: Final = "AGP_ROUTER"
MAX_CANDIDATES: Final = 256  # names handled per browse; bounds work a flooder can cause
RESOLVE_TIMEOUT: Final = 1.0  # seconds one silent name may cost

Interfaces = Union[Sequence[str], InterfaceChoice]
TrustCheck = Callable[[Announcement], bool]


@dataclass
class MdnsStats:
    """Counters for what browsing saw and dropped (exported as metrics by the caller)."""

    seen: int = 0
    resolved: int = 0
    unresolved: int = 0
    untrusted: int = 0
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


def _refuse_in_loop(what: str) -> None:
    # zeroconf's blocking calls run on its loop; from inside a running loop they would stall it.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks; inside a coroutine use its async_ variant")


def _default_addresses(interfaces: Interfaces) -> list[str]:
    if not isinstance(interfaces, InterfaceChoice):
        return list(interfaces)
    import ifaddr  # zeroconf's own dependency

    found = [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if ip.is_IPv4 and isinstance(ip.ip, str)]
    lan = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return lan or ["127.0.0.1"]


class Announcer:
    """Announces one process on mDNS; ``start()``/``close()`` or the ``async_`` pair.

    ``addresses`` should be where the announced sockets are bound; by default the chosen
    interfaces' addresses (or the host's LAN IPv4 addresses for ``all``).
    """

    def __init__(self, *, role: str, name: str, server_key: str, port: int,
                 pub_port: int | None = None, sub_port: int | None = None,
                 version: str = "0", mesh: str = "default", instance: str | None = None,
                 addresses: Sequence[str] | None = None, interfaces: Interfaces | None = None,
                 zc: Zeroconf | None = None, env: Mapping[str, str] | None = None) -> None:
        self._txt = announcement_txt(role=role, name=name, server_key=server_key,
                                     version=version, mesh=mesh, port=port,
                                     pub_port=pub_port, sub_port=sub_port)
        self.enabled = mdns_enabled(env)
        self.interfaces = mdns_interfaces(interfaces, env)
        label = dns_label(instance or f"{role}-{socket.gethostname()}-{port}")
        self._addresses = list(addresses) if addresses is not None else None
        self._port = port
        self._server = f"{host_label(label)[:54]}-{secrets.token_hex(4)}.local."
        self._full_name = f"{label}.{SERVICE_TYPE}"
        self._zc = zc
        self._own_zc: Zeroconf | None = None
        self._aiozc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    @property
    def instance_name(self) -> str:
        """The full DNS-SD instance name (it may gain a ``-2`` suffix on a conflict)."""
        return self._info.name if self._info is not None else self._full_name

    def _make_info(self) -> ServiceInfo:
        addresses = self._addresses or _default_addresses(self.interfaces)
        return ServiceInfo(SERVICE_TYPE, self._full_name, port=self._port,
                           properties=self._txt, server=self._server,
                           parsed_addresses=addresses)

    def start(self) -> bool:
        """Probe and announce (about 1.5 s, RFC 6762 s8). False when mDNS is off."""
        _refuse_in_loop("Announcer.start")
        if not self.enabled or self._info is not None:
            return self.enabled
        try:
            if self._zc is None:
                self._own_zc = Zeroconf(interfaces=self.interfaces)
            zc = self._zc or self._own_zc
            assert zc is not None
            info = self._make_info()
            zc.register_service(info, allow_name_change=True)
        except OSError as exc:
            self.close()
            raise Unavailable(f"mDNS announce failed: {exc}")
        except BaseException:
            self.close()  # never leave zeroconf's thread and sockets behind
            raise
        self._info = info
        return True

    def close(self) -> None:
        """Send goodbyes (so browsers drop us at once) and release what we opened."""
        zc = self._zc or self._own_zc
        if self._info is not None and zc is not None:
            try:
                zc.unregister_service(self._info)
            except Exception as exc:  # closing must not raise: best effort goodbye
                log.debug("mDNS goodbye failed: %s", exc)
        self._info = None
        if self._own_zc is not None:
            self._own_zc.close()
            self._own_zc = None

    async def async_start(self) -> bool:
        """Probe and announce from a coroutine. False when mDNS is off."""
        if not self.enabled or self._info is not None:
            return self.enabled
        try:
            self._aiozc = AsyncZeroconf(interfaces=self.interfaces, zc=self._zc)
            info = self._make_info()
            done = await self._aiozc.async_register_service(info, allow_name_change=True)
            await done
        except OSError as exc:
            await self.async_close()
            raise Unavailable(f"mDNS announce failed: {exc}")
        except BaseException:
            await self.async_close()
            raise
        self._info = info
        return True

    async def async_close(self) -> None:
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        if self._info is not None:
            try:
                await (await aiozc.async_unregister_service(self._info))
            except Exception as exc:  # closing must not raise: best effort goodbye
                log.debug("mDNS goodbye failed: %s", exc)
        self._info = None
        if self._zc is None:
            await aiozc.async_close()

    def __enter__(self) -> Announcer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Announcer:
        await self.async_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()


# -- browsing ------------------------------------------------------------------------------

def _instance_of(name: str) -> str:
    return name[: -len(SERVICE_TYPE) - 1] if name.endswith("." + SERVICE_TYPE) else name


def _announcement(info: ServiceInfo, stats: MdnsStats) -> Announcement | None:
    """Parse a resolved ServiceInfo; count and drop anything bad."""
    try:
        return parse_announcement(_instance_of(info.name), info.text or b"", port=info.port,
                                  addresses=info.parsed_addresses())
    except (Malformed, TooLarge) as exc:
        stats.dropped[exc.details.get("field", "other")] += 1
        log.debug("dropped mDNS record %r: %s", info.name[:80], exc)
        return None


class _Filter:
    """The accept decision shared by the sync and async browsers."""

    def __init__(self, role: str | None, mesh: str | None, stats: MdnsStats,
                 pinned: str | None = None, trust: TrustCheck | None = None,
                 need_trust: bool = False) -> None:
        self.role, self.mesh, self.stats = role, mesh, stats
        self.pinned, self.trust, self.need_trust = pinned, trust, need_trust

    def __call__(self, ann: Announcement) -> bool:
        if (self.role is not None and ann.role != self.role) or (
                self.mesh is not None and ann.mesh != self.mesh):
            return False
        if not self.need_trust:
            return True
        if self.pinned is not None and hmac.compare_digest(ann.server_key.encode(),
                                                           self.pinned.encode()):
            return True
        if self.trust is not None and self.trust(ann) is True:
            return True
        self.stats.untrusted += 1
        return False


def _browse_sync(zc: Zeroconf, timeout: float, accept: _Filter, first: bool) -> list[Announcement]:
    names: queue.Queue[tuple[str, bool]] = queue.Queue(maxsize=MAX_CANDIDATES)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        try:
            names.put_nowait((name, state_change is ServiceStateChange.Removed))
        except queue.Full:
            accept.stats.dropped["flood"] += 1

    found: dict[str, Announcement] = {}
    deadline = time.monotonic() + timeout
    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        for _ in range(MAX_CANDIDATES):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                name, removed = names.get(timeout=remaining)
            except queue.Empty:
                break
            if removed:
                found.pop(name, None)
                continue
            accept.stats.seen += 1
            ann = _resolve_sync(zc, name, deadline, accept.stats)
            if ann is not None and accept(ann):
                found[name] = ann
                if first:
                    break
    finally:
        browser.cancel()
    return list(found.values())


def _resolve_sync(zc: Zeroconf, name: str, deadline: float,
                  stats: MdnsStats) -> Announcement | None:
    wait_ms = int(min(deadline - time.monotonic(), RESOLVE_TIMEOUT) * 1000)
    try:
        info = ServiceInfo(SERVICE_TYPE, name)
        ok = wait_ms > 0 and info.request(zc, wait_ms)
    except BadTypeInNameException:
        stats.dropped["name"] += 1
        return None
    if not ok:
        stats.unresolved += 1
        return None
    stats.resolved += 1
    return _announcement(info, stats)


async def _browse_async(aiozc: AsyncZeroconf, timeout: float, accept: _Filter,
                        first: bool) -> list[Announcement]:
    names: asyncio.Queue[tuple[str, bool]] = asyncio.Queue(maxsize=MAX_CANDIDATES)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        try:
            names.put_nowait((name, state_change is ServiceStateChange.Removed))
        except asyncio.QueueFull:
            accept.stats.dropped["flood"] += 1

    found: dict[str, Announcement] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        for _ in range(MAX_CANDIDATES):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                name, removed = await asyncio.wait_for(names.get(), remaining)
            except asyncio.TimeoutError:
                break
            if removed:
                found.pop(name, None)
                continue
            accept.stats.seen += 1
            wait_ms = int(min(deadline - loop.time(), RESOLVE_TIMEOUT) * 1000)
            try:
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                ok = wait_ms > 0 and await info.async_request(aiozc.zeroconf, wait_ms)
            except BadTypeInNameException:
                accept.stats.dropped["name"] += 1
                continue
            if not ok:
                accept.stats.unresolved += 1
                continue
            accept.stats.resolved += 1
            ann = _announcement(info, accept.stats)
            if ann is not None and accept(ann):
                found[name] = ann
                if first:
                    break
    finally:
        await browser.async_cancel()
    return list(found.values())


def _run_sync(timeout: float, accept: _Filter, first: bool, interfaces: Interfaces | None,
              zc: Zeroconf | None, env: Mapping[str, str] | None) -> list[Announcement]:
    _refuse_in_loop("mDNS browse")
    if not mdns_enabled(env):
        return []
    chosen = mdns_interfaces(interfaces, env)
    own = None
    try:
        own = Zeroconf(interfaces=chosen) if zc is None else None
        return _browse_sync(zc or own, timeout, accept, first)  # type: ignore[arg-type]
    except OSError as exc:
        accept.stats.dropped["socket"] += 1
        log.debug("mDNS browse failed: %s", exc)
        return []
    finally:
        if own is not None:
            own.close()


async def _run_async(timeout: float, accept: _Filter, first: bool,
                     interfaces: Interfaces | None, aiozc: AsyncZeroconf | None,
                     env: Mapping[str, str] | None) -> list[Announcement]:
    if not mdns_enabled(env):
        return []
    chosen = mdns_interfaces(interfaces, env)
    own = None
    try:
        own = AsyncZeroconf(interfaces=chosen) if aiozc is None else None
        return await _browse_async(aiozc or own, timeout, accept, first)  # type: ignore[arg-type]
    except OSError as exc:
        accept.stats.dropped["socket"] += 1
        log.debug("mDNS browse failed: %s", exc)
        return []
    finally:
        if own is not None:
            await own.async_close()


def browse(timeout: float = 1.0, *, role: str | None = None, mesh: str | None = None,
           interfaces: Interfaces | None = None, zc: Zeroconf | None = None,
           env: Mapping[str, str] | None = None,
           stats: MdnsStats | None = None) -> list[Announcement]:
    """Everything announced within ``timeout`` seconds (unverified claims; see module doc)."""
    accept = _Filter(role, mesh, stats or STATS)
    return _run_sync(timeout, accept, False, interfaces, zc, env)


def browse_routers(timeout: float = 1.0, *, mesh: str | None = None,
                   interfaces: Interfaces | None = None, zc: Zeroconf | None = None,
                   env: Mapping[str, str] | None = None,
                   stats: MdnsStats | None = None) -> list[RouterInfo]:
    """Routers announced within ``timeout`` seconds; their keys are unverified claims."""
    return browse(timeout, role="router", mesh=mesh, interfaces=interfaces, zc=zc, env=env,
                  stats=stats)


async def async_browse_routers(timeout: float = 1.0, *, mesh: str | None = None,
                               interfaces: Interfaces | None = None,
                               aiozc: AsyncZeroconf | None = None,
                               env: Mapping[str, str] | None = None,
                               stats: MdnsStats | None = None) -> list[RouterInfo]:
    """:func:`browse_routers` for coroutines."""
    accept = _Filter("router", mesh, stats or STATS)
    return await _run_async(timeout, accept, False, interfaces, aiozc, env)


def _pinned(pinned_key: str | bytes | None, trust: TrustCheck | None) -> str | None:
    if pinned_key is None and trust is None:
        raise ConfigError("find_router needs pinned_key or trust: an mDNS key is only a claim")
    if pinned_key is None:
        return None
    if isinstance(pinned_key, bytes) and len(pinned_key) == 32:
        from zmq.utils import z85

        pinned_key = z85.encode(pinned_key)
    text = pinned_key.decode("ascii", "replace") if isinstance(pinned_key, bytes) else pinned_key
    try:
        return check_z85_key(text, "pinned_key")
    except (Malformed, TooLarge) as exc:
        raise ConfigError(exc.message)


def find_router(timeout: float = 3.0, *, pinned_key: str | bytes | None = None,
                trust: TrustCheck | None = None, mesh: str | None = None,
                interfaces: Interfaces | None = None, zc: Zeroconf | None = None,
                env: Mapping[str, str] | None = None,
                stats: MdnsStats | None = None) -> RouterInfo | None:
    """The first router whose key equals ``pinned_key`` (Z85 text or 32 raw bytes) or passes
    ``trust``; None after ``timeout`` seconds, or at once when mDNS is off.

    Routers that fail both are counted in ``stats.untrusted`` and never returned.
    """
    accept = _Filter("router", mesh, stats or STATS, _pinned(pinned_key, trust), trust, True)
    found = _run_sync(timeout, accept, True, interfaces, zc, env)
    return found[0] if found else None


async def async_find_router(timeout: float = 3.0, *, pinned_key: str | bytes | None = None,
                            trust: TrustCheck | None = None, mesh: str | None = None,
                            interfaces: Interfaces | None = None,
                            aiozc: AsyncZeroconf | None = None,
                            env: Mapping[str, str] | None = None,
                            stats: MdnsStats | None = None) -> RouterInfo | None:
    """:func:`find_router` for coroutines."""
    accept = _Filter("router", mesh, stats or STATS, _pinned(pinned_key, trust), trust, True)
    found = await _run_async(timeout, accept, True, interfaces, aiozc, env)
    return found[0] if found else None


def router_endpoint(explicit: str | None = None, *, timeout: float = 3.0,
                    pinned_key: str | bytes | None = None, trust: TrustCheck | None = None,
                    mesh: str | None = None, interfaces: Interfaces | None = None,
                    env: Mapping[str, str] | None = None) -> str | None:
    """Where to connect: ``explicit``, else ``AGP_ROUTER``, else a trusted mDNS router.

    Explicit configuration wins so a user who said where never waits on multicast. Returns
    None when nothing is configured and no trusted router answered (or mDNS is off).
    """
    environ = os.environ if env is None else env
    for source, value in (("endpoint", explicit), (ENV_ROUTER, environ.get(ENV_ROUTER))):
        if value:
            try:
                return check_endpoint(value.strip(), source)
            except (Malformed, TooLarge) as exc:
                raise ConfigError(exc.message)
    if not mdns_enabled(environ):
        return None
    found = find_router(timeout, pinned_key=pinned_key, trust=trust, mesh=mesh,
                        interfaces=interfaces, env=environ)
    return found.endpoint if found is not None else None
