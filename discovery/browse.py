"""Browse mDNS for mesh processes, and find a router worth connecting to.

What mDNS tells us is unauthenticated: anyone on the link can announce anything, so
:func:`find_router` only returns a router (role ``router``: agents announce too, and are
never taken for one) whose announced key equals the key the caller pinned, or which the
caller's ``trust`` check accepts (for example "this key is enrolled"). The CURVE handshake
then proves the router holds it. Every name costs at most ``RESOLVE_TIMEOUT``; at most
``MAX_CANDIDATES`` names are handled per browse; bad records are counted and dropped.

:func:`find_router` returns a trusted router one of whose addresses answers (see
:mod:`discovery.reach`): its addresses are tried in order, then the next trusted record.
Routers none of whose addresses answer are counted in ``stats.unreachable``; if no trusted
router answers within ``FALLBACK_WAIT`` of the first that did not, that first one is returned
as announced (the caller's connect reports the failure, as it did before any probing). The
probe in progress may add up to ``2 * CONNECT_TIMEOUT`` to the caller's timeout.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import queue
import time
from collections.abc import Callable, Mapping
from typing import Final

from zeroconf import (
    BadTypeInNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discovery.announcement import SERVICE_TYPE, Announcement, RouterInfo, parse_announcement
from discovery.mdns_config import (
    ENV_ROUTER,
    STATS,
    Interfaces,
    MdnsStats,
    TrustCheck,
    mdns_enabled,
    mdns_interfaces,
    refuse_in_loop,
)
from discovery.reach import CONNECT_TIMEOUT, async_first_answering, first_answering
from discovery.records import check_endpoint, check_z85_key
from mesh.errors import ConfigError, Malformed, TooLarge

log = logging.getLogger("discovery.mdns")

MAX_CANDIDATES: Final = 256  # names handled per browse; bounds work a flooder can cause
RESOLVE_TIMEOUT: Final = 1.0  # seconds one silent name may cost
FALLBACK_WAIT: Final = 2.5  # seconds to look on after a trusted router did not answer


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


def _change_handler(put_nowait: Callable[[tuple[str, bool]], None],
                    full: type[Exception], stats: MdnsStats) -> Callable[..., None]:
    """A browser's handler: (name, removed) into a bounded queue; a flood is counted."""

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        try:
            put_nowait((name, state_change is ServiceStateChange.Removed))
        except full:
            stats.dropped["flood"] += 1

    return on_change


def _probe_budget(remaining: float) -> float:
    # the rest of the browse's time, and never less than one blackholed address plus one
    return max(2 * CONNECT_TIMEOUT, remaining)


class _Found:
    """What one browse found. For find_router (``first``): the first trusted router that
    answers; failing that, ``FALLBACK_WAIT`` after the first trusted one that did not, that
    one as announced (as before probing: the caller's connect then reports the failure)."""

    def __init__(self, first: bool, deadline: float) -> None:
        self.first = first
        self.deadline = deadline
        self.items: dict[str, Announcement] = {}
        self._fallback: tuple[str, Announcement] | None = None

    def remove(self, name: str) -> None:
        self.items.pop(name, None)
        if self._fallback is not None and self._fallback[0] == name:
            self._fallback = None

    def unreachable(self, name: str, ann: Announcement, now: float, stats: MdnsStats) -> None:
        stats.unreachable += 1
        if self._fallback is None:
            self._fallback = (name, ann)
            self.deadline = min(self.deadline, now + FALLBACK_WAIT)

    def result(self) -> list[Announcement]:
        if self.items or self._fallback is None:
            return list(self.items.values())
        return [self._fallback[1]]


def _browse_sync(zc: Zeroconf, timeout: float, accept: _Filter, first: bool) -> list[Announcement]:
    names: queue.Queue[tuple[str, bool]] = queue.Queue(maxsize=MAX_CANDIDATES)
    on_change = _change_handler(names.put_nowait, queue.Full, accept.stats)

    found = _Found(first, time.monotonic() + timeout)
    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        for _ in range(MAX_CANDIDATES):
            remaining = found.deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                name, removed = names.get(timeout=remaining)
            except queue.Empty:
                break
            if removed:
                found.remove(name)
                continue
            accept.stats.seen += 1
            ann = _resolve_sync(zc, name, found.deadline, accept.stats)
            if ann is None or not accept(ann):
                continue
            if first:  # find_router: only a router that answers, else the next one
                reached = first_answering(ann, _probe_budget(found.deadline - time.monotonic()))
                if reached is None:
                    found.unreachable(name, ann, time.monotonic(), accept.stats)
                    continue
                found.items[name] = reached
                break
            found.items[name] = ann
    finally:
        browser.cancel()
    return found.result()


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
    on_change = _change_handler(names.put_nowait, asyncio.QueueFull, accept.stats)

    loop = asyncio.get_running_loop()
    found = _Found(first, loop.time() + timeout)
    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        for _ in range(MAX_CANDIDATES):
            remaining = found.deadline - loop.time()
            if remaining <= 0:
                break
            try:
                name, removed = await asyncio.wait_for(names.get(), remaining)
            except asyncio.TimeoutError:
                break
            if removed:
                found.remove(name)
                continue
            accept.stats.seen += 1
            wait_ms = int(min(found.deadline - loop.time(), RESOLVE_TIMEOUT) * 1000)
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
            if ann is None or not accept(ann):
                continue
            if first:  # find_router: only a router that answers, else the next one
                budget = _probe_budget(found.deadline - loop.time())
                reached = await async_first_answering(ann, budget)
                if reached is None:
                    found.unreachable(name, ann, loop.time(), accept.stats)
                    continue
                found.items[name] = reached
                break
            found.items[name] = ann
    finally:
        await browser.async_cancel()
    return found.result()


def _run_sync(timeout: float, accept: _Filter, first: bool, interfaces: Interfaces | None,
              zc: Zeroconf | None, env: Mapping[str, str] | None) -> list[Announcement]:
    refuse_in_loop("mDNS browse")
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
    ``trust``, and one of whose addresses answers (its ``endpoint`` is that address); None
    after ``timeout`` seconds, or at once when mDNS is off.

    Routers that fail the key check are counted in ``stats.untrusted``, those that do not
    answer in ``stats.unreachable``; neither is returned.
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
