"""The public keys a client seals end to end for, per service, from the discovery registry.

A sealed request must be openable by whichever instance the router picks, so the client
seals for every key the registry lists for the service (or the one instance named). Asking
the registry per request would double the traffic, so keys are cached: fresh for
``KEYS_FRESH_S``, then served ``KEYS_STALE_S`` more while one lookup in the background
replaces them (stale while revalidate: under steady traffic no request waits for the
registry). One lookup per service at a time: requests that find no keys wait for that one.
An instance that joined since refuses what was not sealed for it (``NotARecipient``):
:meth:`ServiceKeys.refused` forgets the keys, so the next lookup includes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.errors import ConfigError, NoSuchService, NotARecipient

log = logging.getLogger(__name__)

KEYS_FRESH_S = 5.0  # keys from the registry are used this long as they are
# then this long more while one lookup in the background refreshes them: under traffic they
# are replaced within a round trip; after a quiet second, a request waits for the registry
# (an instance registered meanwhile is not sealed for, and would refuse the request)
KEYS_STALE_S = 1.0

Lookup = Callable[[str], Awaitable[list[dict[str, Any]]]]  # service name -> registry records


class ServiceKeys:
    """Cached public keys per destination (``org/ns/service[/instance]``)."""

    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop], lookup: Lookup) -> None:
        self._loop = loop  # the client's loop (its clock; where lookups run)
        self._ask = lookup
        self.entries: dict[str, tuple[float, list[bytes]]] = {}  # dest -> (fresh until, keys)
        self.lookups: dict[str, asyncio.Task[list[bytes]]] = {}  # dest -> the lookup running

    def fresh(self, dest: str) -> list[bytes] | None:
        """The keys of ``dest`` while the cache holds them (starting a background refresh
        once they are past fresh); None: wait for :meth:`get`."""
        hit = self.entries.get(dest)
        if hit is None:
            return None
        now = self._loop().time()
        if hit[0] > now:
            return hit[1]
        if hit[0] + KEYS_STALE_S > now:
            if dest not in self.lookups:
                self._start(dest, dest.split("/"))
            return hit[1]
        return None

    async def get(self, dest: str) -> list[bytes]:
        """The keys of ``dest``, looked up when the cache has none to serve."""
        keys = self.fresh(dest)
        if keys is not None:
            return keys
        parts = dest.split("/")
        if len(parts) not in (3, 4):
            raise ConfigError(f"end-to-end sealing needs a full name (org/ns/service), "
                              f"not {dest!r}")
        lookup = self.lookups.get(dest) or self._start(dest, parts)
        return await asyncio.shield(lookup)  # a caller giving up cancels nobody else's wait

    def forget(self, dest: str) -> None:
        """Drop the keys of ``dest``: the next call looks them up."""
        self.entries.pop(dest, None)

    def refused(self, dest: str, exc: BaseException) -> bool:
        """Whether ``exc`` is an instance refusing a message to ``dest`` that was not sealed
        for it (``NotARecipient``: its handler did not run). Then the keys are forgotten and
        the caller may send once more, sealed for the keys the next lookup finds."""
        if not isinstance(exc, NotARecipient):
            return False
        self.forget(dest)
        return True

    def clear(self) -> None:
        self.entries.clear()

    def _start(self, dest: str, parts: list[str]) -> asyncio.Task[list[bytes]]:
        lookup = self.lookups[dest] = self._loop().create_task(self._fetch(dest, parts))
        lookup.add_done_callback(lambda done: self._done(dest, done))
        return lookup

    async def _fetch(self, dest: str, parts: list[str]) -> list[bytes]:
        records = await self._ask("/".join(parts[:3]))
        keys = sorted({r["public_key"].encode() for r in records
                       if len(parts) == 3 or r["instance"] == parts[3]})
        if not keys:
            self.entries.pop(dest, None)  # gone: stale keys must not outlive their service
            raise NoSuchService(f"no registered key for {dest!r}: cannot seal for it")
        self.entries[dest] = (self._loop().time() + KEYS_FRESH_S, keys)
        return keys

    def _done(self, dest: str, done: asyncio.Task[list[bytes]]) -> None:
        self.lookups.pop(dest, None)
        if not done.cancelled() and done.exception() is not None and dest in self.entries:
            # a refresh behind stale keys failed (its waiters, if any, have the error): the
            # keys serve until KEYS_STALE_S is over, and the next request asks again
            log.warning("refreshing the keys of %s failed: %r", dest, done.exception())
