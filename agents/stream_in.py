"""The agent's side of an incoming stream: chunks as an async iterator, credit back, and
the answer to the open (end-to-end session key, direct-path offer).

Kept apart from ``agents.base`` because it is the only part of an agent that deals with
bulk data: where chunks come from (the router or the agent's direct socket), how they are
opened (``security.stream_keys``) and how credit goes back on the same path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgpack

from mesh import codec
from mesh.errors import Overloaded, Unauthenticated
from mesh.wire import Cmd, Flag, pack_route

if TYPE_CHECKING:
    from agents.base import Agent
    from proto import agp_pb2


class StreamIn:
    """The chunks of an incoming stream, as an async iterator that grants credit back."""

    def __init__(self, agent: Agent, crid: bytes, ident: int, window: int,
                 opener: Any = None) -> None:
        self.agent = agent
        self.crid = crid
        self.ident = ident
        self.window = window
        self.opener = opener  # security.stream_keys.ChunkOpener on an end-to-end stream
        self.ticket = b""  # set when the chunks come over the agent's direct socket
        self._chunks: deque[tuple[list[bytes], bool]] = deque()
        self._ended = False
        self._event = asyncio.Event()
        self._consumed = 0
        self.received = 0
        self.overrun = False

    @property
    def direct(self) -> bool:
        """True when the chunks come peer to peer, not through the router."""
        return bool(self.ticket)

    def push(self, frames: list[bytes], direct: bool = False) -> None:
        """A chunk arrived: through the router, or (``direct``) on the agent's own CURVE
        connection with the stream's client."""
        if self.overrun or len(self._chunks) >= self.window:
            self.overrun = True  # the sender ignored its credit: end the stream with an error
            self._ended = True
            self.agent._count_drop("stream_overrun")
        else:
            self._chunks.append((frames, direct))
            self.received += 1
        self._event.set()

    def end(self) -> None:
        self._ended = True
        self._event.set()

    def grant(self, n: int) -> None:
        """Credit back on the path the chunks come by."""
        direct = self.agent.direct
        if self.ticket and direct is not None and direct.grant(self.ticket, n):
            return
        self.agent._send([pack_route(Cmd.STREAM_CREDIT, 0, 0, n, self.ident), self.crid])

    def close(self) -> None:
        """The handler finished: the direct ticket is no longer good."""
        if self.ticket and self.agent.direct is not None:
            self.agent.direct.withdraw(self.ticket)

    def __aiter__(self) -> StreamIn:
        return self

    async def __anext__(self) -> Any:
        """The next chunk: ``bytes`` for a raw one, the decoded value otherwise."""
        chunk = await self._next()
        return bytes(chunk) if isinstance(chunk, memoryview) else chunk

    async def views(self) -> AsyncIterator[Any]:
        """The chunks, but a large raw chunk that came peer to peer is a read-only
        ``memoryview`` of the buffer libzmq received it in, not a copy in ``bytes``: for a
        handler that reads bulk data once (``numpy.frombuffer``, a file's ``write``,
        ``len``). A view stays valid as long as it is referenced."""
        while True:
            try:
                chunk = await self._next()
            except StopAsyncIteration:
                return
            yield chunk.toreadonly() if isinstance(chunk, memoryview) else chunk

    async def _next(self) -> Any:
        while not self._chunks:
            if self.overrun:
                raise Overloaded("stream sender ignored flow control: more chunks than its "
                                 "credit")
            if self._ended:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        frames, direct = self._chunks.popleft()
        self._consumed += 1
        if self._consumed >= max(1, self.window // 2):
            self.grant(self._consumed)
            self._consumed = 0
        route_flags = frames[0][2]
        payload = frames[3:]
        if self.opener is not None and route_flags & Flag.ENCRYPTED:
            payload = self.opener.open(payload)
        elif self.opener is not None and not direct:
            # peer to peer the CURVE session itself is end to end: it ends in this process
            # and in the client's, whose key sealed the open (the ZAP gate admits only it);
            # through the router, a chunk must be sealed
            raise Unauthenticated("a plaintext chunk on an end-to-end stream")
        elif route_flags & Flag.ENCRYPTED:
            raise Unauthenticated("a sealed chunk on a stream with no session key")
        if route_flags & Flag.RAW:
            return payload[0] if payload else b""
        return codec.decode(payload)


def accept(agent: Agent, crid: bytes, ident: int, flags: int, env: agp_pb2.Envelope,
           window: int) -> StreamIn:
    """Take a STREAM_OPEN: set up its session key and direct offer, and send the first
    credit (with the answer the client needs for either)."""
    answer: dict[str, bytes] = {}
    opener = None
    security = agent.security
    if flags & Flag.ENCRYPTED:
        if not env.ephemeral_key or security is None:
            raise Unauthenticated("a sealed stream needs the client's session key")
        from security.keys import raw_key
        from security.stream_keys import ChunkOpener, agent_answer

        eph, proof, key = agent_answer(raw_key(security.secret), env.ephemeral_key, ident)
        opener = ChunkOpener(key, ident)
        answer.update(k=bytes(security.public), e=eph, p=proof)
    st = StreamIn(agent, crid, ident, window, opener)
    credit = window
    direct = agent.direct
    if flags & Flag.DIRECT and direct is not None and (security is None or env.sender_key):
        # the router checked sender_key is the key the client's connection authenticated
        key = env.sender_key.decode() if security is not None else None
        st.ticket = direct.offer(ident, key, st, on_bound=lambda: st.grant(window))
        answer.update(t=st.ticket, ep=direct.endpoint.encode())
        if security is not None:
            answer["k"] = bytes(security.public)
        credit = 0  # the credits go on the direct connection once the client is on it
    frames = [pack_route(Cmd.STREAM_CREDIT, 0, 0, credit, ident), crid]
    if answer:
        frames += [b"", msgpack.packb(answer)]
    agent._send(frames)
    return st
