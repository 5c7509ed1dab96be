"""Fire-and-forget: ``AsyncMesh.send`` and ``send_nowait``, a mixin of :class:`mesh.aio.AsyncMesh`.

A send is delivered to one instance of a service with no reply. On a client that seals end
to end it is sealed like a request, for the keys the registry lists (``send`` awaits them
the first time); ``send_nowait`` sends at once and so takes plain payloads only. An
instance that refuses a sealed send (keys older than it) tells the client through the
router, and the client drops those keys (``Core.on_send_refused``): the send itself is lost,
counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mesh import codec, metrics
from mesh.core import Core
from mesh.errors import ConfigError, Overloaded
from mesh.service_keys import ServiceKeys
from mesh.wire import Cmd, Flag, pack_route

_RAW, _ENCRYPTED = int(Flag.RAW), int(Flag.ENCRYPTED)


class FireAndForget:
    """``send`` and ``send_nowait``, for :class:`mesh.aio.AsyncMesh`."""

    # provided by AsyncMesh
    core: Core
    e2e: Any
    service_keys: ServiceKeys
    _loop: Any
    _seal: Any
    _address: Any
    _header: Any

    async def send(self, dest: str, action: str, data: Any = None, *, raw: bool = False,
                   timeout: float = 10.0) -> None:
        """Deliver to one instance of ``dest`` with no reply; wait (up to ``timeout``) while
        the outgoing queue is full. Refusals by the router are counted and logged."""
        loop = self._loop()
        deadline = loop.time() + timeout
        sealed: list[Any] | None = None
        if self.e2e is not None:  # sealed for the service's keys, like a request
            sealed = await self._sealed_send(dest, action, data, raw)
        while True:
            try:
                if sealed is not None:
                    self.core.send_frames(sealed)
                else:
                    self.send_nowait(dest, action, data, raw=raw)
                return
            except Overloaded:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.001)  # backpressure: the socket drains meanwhile

    async def _sealed_send(self, dest: str, action: str, data: Any, raw: bool) -> list[Any]:
        recipients = await self.service_keys.get(dest)
        ident = self.core.next_id()
        payload: list[Any] = [data] if raw else codec.encode(data)
        header, sealed, _ = self._seal(recipients, action, ident, payload)
        flags = _ENCRYPTED | (_RAW if raw else 0)
        return [pack_route(Cmd.SEND, flags, 0, 0, ident), self._address(dest), header, *sealed]

    def send_nowait(self, dest: str, action: str, data: Any = None, *, raw: bool = False) -> None:
        """Fire-and-forget now (plain payload; use ``send`` on an end-to-end mesh)."""
        if self.e2e is not None:
            raise ConfigError("this client seals payloads end to end: use `await send(...)`")
        address = self._address(dest)
        payload: list[Any] = [data] if raw else codec.encode(data)
        frames = [pack_route(Cmd.SEND, Flag.RAW if raw else 0, 0, 0, self.core.next_id()),
                  address, self._header(action), *payload]
        self.core.send_frames(frames)
        if metrics.CLIENT is not None:
            metrics.CLIENT.sent("send", metrics.payload_bytes(payload))
