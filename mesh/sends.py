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

from mesh import codec, metrics, telemetry
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
        tp = telemetry.inject() if telemetry.ENABLED else None  # the agent's span: our child
        sealed: list[Any] | None = None
        nbytes = 0
        if self.e2e is not None:  # sealed for the service's keys, like a request
            sealed, nbytes = await self._sealed_send(dest, action, data, raw, tp)
        while True:
            try:
                if sealed is not None:
                    self.core.send_frames(sealed)
                    if metrics.CLIENT is not None:
                        metrics.CLIENT.sent("send", nbytes)
                else:
                    self._send_plain(dest, action, data, raw, tp)
                return
            except Overloaded:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.001)  # backpressure: the socket drains meanwhile

    async def _sealed_send(self, dest: str, action: str, data: Any, raw: bool,
                           tp: str | None) -> tuple[list[Any], int]:
        """The frames of a sealed SEND and its plain payload's size (counted as requests)."""
        recipients = await self.service_keys.get(dest)
        ident = self.core.next_id()
        payload: list[Any] = [data] if raw else codec.encode(data)
        header, sealed, _ = self._seal(recipients, action, ident, payload, None, tp)
        flags = _ENCRYPTED | (_RAW if raw else 0) | telemetry.route_flags(tp)
        frames = [pack_route(Cmd.SEND, flags, 0, 0, ident), self._address(dest), header, *sealed]
        self._check_size(header, sealed)
        return frames, metrics.payload_bytes(payload)

    def _check_size(self, header: bytes, payload: list[Any]) -> None:
        """Raise TooLarge, nothing sent, for what the router would surely refuse."""
        refused = self.core.oversize(header, payload)
        if refused is not None:
            raise refused

    def send_nowait(self, dest: str, action: str, data: Any = None, *, raw: bool = False) -> None:
        """Fire-and-forget now (plain payload; use ``send`` on an end-to-end mesh)."""
        if self.e2e is not None:
            raise ConfigError("this client seals payloads end to end: use `await send(...)`")
        self._send_plain(dest, action, data, raw,
                         telemetry.inject() if telemetry.ENABLED else None)

    def _send_plain(self, dest: str, action: str, data: Any, raw: bool, tp: str | None) -> None:
        """One plain SEND carrying ``tp`` (the caller's trace context), counted."""
        address = self._address(dest)
        payload: list[Any] = [data] if raw else codec.encode(data)
        flags = (_RAW if raw else 0) | telemetry.route_flags(tp)
        header = self._header(action, None, tp)
        self._check_size(header, payload)
        frames = [pack_route(Cmd.SEND, flags, 0, 0, self.core.next_id()), address, header,
                  *payload]
        self.core.send_frames(frames)
        if metrics.CLIENT is not None:
            metrics.CLIENT.sent("send", metrics.payload_bytes(payload))
