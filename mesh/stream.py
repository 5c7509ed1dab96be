"""Client side of a stream: open, write under credit, end, and get the service's result.

The receiving agent grants credits (chunks it is ready to take); ``write`` waits when none
are left, so a fast producer can never overrun a slow consumer and memory on both sides
stays bounded by the window whatever the stream's length.

Two paths for the chunks: through the router, or peer to peer when the agent offers it
(``mesh.direct``: the open, the result, errors and cancellation still go through the router).
On a client that seals end to end, the open is sealed like a request and every chunk is
sealed under a key only this stream's two ends derive (``security.stream_keys``), whatever
the path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from mesh import codec, metrics, telemetry
from mesh.errors import (
    Closed,
    Error,
    ErrorCode,
    Malformed,
    Overloaded,
    Unauthenticated,
    Unavailable,
    error_from_code,
)
from mesh.wire import Cmd, Flag, pack_route, parse_error, parse_route
from proto import agp_pb2

if TYPE_CHECKING:
    import zmq

    from mesh.aio import AsyncMesh

log = logging.getLogger("agp.stream")

BIND_TIMEOUT = 5.0  # how long a direct path may take to start before the router path is used
MAX_ANSWER = 4096


def parse_answer(msg: list[bytes]) -> dict[str, bytes]:
    """The agent's first credit may carry an answer: its key, the stream's session key and
    proof (end to end), a ticket and endpoint (direct). Bytes values only, capped."""
    if len(msg) < 4 or not msg[3]:
        return {}
    if len(msg[3]) > MAX_ANSWER:
        raise Malformed("stream answer too large")
    try:
        answer = msgpack.unpackb(msg[3], max_map_len=8, max_bin_len=1024, max_str_len=1024)
    except Exception:
        raise Malformed("undecodable stream answer") from None
    if not isinstance(answer, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in answer.items()):
        raise Malformed("stream answer is not a map of bytes")
    return answer


class AsyncStream:
    def __init__(self, mesh: AsyncMesh, dest: str, action: str, params: Any,
                 timeout: float, *, direct: bool = True) -> None:
        self.mesh = mesh
        self.core = mesh.core
        self.dest = dest
        self.action = action
        self.params = params
        self.timeout = timeout
        self.want_direct = direct
        self.direct = False  # True once chunks flow peer to peer
        self.ident = 0
        self.credits = 0
        self.sent = 0
        self.bytes_sent = 0
        self.instance = b""
        self._waiter: asyncio.Future[Any] | None = None
        self._credit_event = asyncio.Event()
        self._ended = False
        self._result: Any = None
        self._answer: dict[str, bytes] | None = None
        self._recipients: list[bytes] = []
        self._reply_key: Any = None  # security.payload.ReplyKey of a sealed open
        self._sealer: Any = None
        self._sock: zmq.Socket[Any] | None = None
        self._ticket = b""
        self._refused = False  # the agent's direct socket no longer takes this stream

    # ------------------------------------------------------------------ credit
    def _on_credit(self, n: int, msg: list[bytes]) -> None:
        if self._answer is None:
            try:
                self._answer = parse_answer(msg)
            except Error as exc:
                self._fail(exc)
                return
        self.credits += n
        self._credit_event.set()

    def _on_direct_credit(self, n: int) -> None:
        self.credits += n
        self._credit_event.set()

    def _on_direct_error(self, msg: list[bytes]) -> None:
        code, message, details = parse_error(parse_route(msg[0]), msg)
        if code == ErrorCode.CANCELLED:
            self._off_direct()
            return
        self._fail(error_from_code(code, f"direct stream: {message}", details))

    def _off_direct(self) -> None:
        """The agent's direct socket has no such stream any more: its handler finished, and
        its answer (or error) comes through the router, which this one-hop refusal may
        overtake; or the stream was cancelled. No chunk goes on; an END through the router
        makes it tell which (it passes the END on, or says it has no such stream)."""
        self._refused = True
        self.credits = 0
        if self._sock is not None:
            self._sock = None
            self.core.direct_links().forget(self.ident)
        assert self._waiter is not None
        if not self._waiter.done():
            try:
                self.core.send_frames([pack_route(Cmd.STREAM_END, 0, 0, 0, self.ident), b"",
                                       b""])
            except Error as exc:
                self._fail(exc)
        self._credit_event.set()

    def _fail(self, exc: BaseException) -> None:
        p = self.core.pending.pop(self.ident, None)
        if p is not None and not p.waiter.done():
            p.waiter.set_exception(exc)
        self._credit_event.set()

    async def _wait_for(self, ready: Any, timeout: float | None = None) -> bool:
        """Wait until ``ready()`` or the stream ended (raising its error) or ``timeout``."""
        assert self._waiter is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not ready():
            if self._sock is not None:
                self.core.direct_links().poll(self._sock)
                if ready():
                    break
            if self._waiter.done():
                self._finish()
                self._waiter.result()  # raises the stream's error
                raise Closed("stream ended by the service")
            self._credit_event.clear()
            credit = asyncio.ensure_future(self._credit_event.wait())
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                credit.cancel()
                return False
            done, _ = await asyncio.wait({credit, self._waiter}, timeout=left,
                                         return_when=asyncio.FIRST_COMPLETED)
            if credit not in done:
                credit.cancel()
        return True

    # ------------------------------------------------------------------ open
    async def open(self) -> AsyncStream:
        """Open the stream: returns once it has credit. However the open ends otherwise
        (cancelled, timed out, refused), nothing stays behind: ``async with`` calls no
        ``__aexit__`` when the enter failed, and a service that has the open (or has it in
        its queue) is told to drop it, or its handler would hold a slot until the deadline."""
        try:
            return await self._open_a_path()
        except BaseException:
            if self._waiter is not None and not self._waiter.done():
                self.abort()
            else:
                self._finish()
            raise

    async def _open_a_path(self) -> AsyncStream:
        direct = self.want_direct
        rekeyed = False
        while True:
            try:
                await self._open(direct)
            except Error as exc:
                # sealed for keys older than the instance the router picked (it did not
                # start the handler): open once more for the keys looked up anew
                if rekeyed or not self.mesh.service_keys.refused(self.dest, exc):
                    raise
                rekeyed = True
                continue
            if not self._ticket:
                return self
            if await self._bind():
                return self
            log.warning("direct stream path to %s did not start within %.0fs: using the "
                        "router", self.instance.decode(errors="replace"), BIND_TIMEOUT)
            self.abort()
            self._ended = False
            direct = False

    async def _open(self, direct: bool) -> None:
        loop = asyncio.get_running_loop()
        mesh, core = self.mesh, self.core
        self._waiter = loop.create_future()
        self._answer, self._sealer, self._sock, self._ticket = None, None, None, b""
        self._refused = False
        self.credits = 0
        self.ident = ident = core.next_id()
        payload: list[Any] = codec.encode(self.params)
        tp = telemetry.inject() if telemetry.ENABLED else None  # the agent's span: our child
        flags = telemetry.route_flags(tp)  # traced: the router records its hop
        exchange = None
        if mesh.e2e is not None:
            from security.stream_keys import ClientExchange

            exchange = ClientExchange(ident)
            self._recipients = await mesh.service_keys.get(self.dest)
            aad = self.action.encode() + b"\0" + ident.to_bytes(8, "little") + exchange.public
            blob, payload, self._reply_key = mesh.e2e.seal(self._recipients, payload, aad)
            header = agp_pb2.Envelope(action=self.action, nonce=blob,
                                      sender_key=mesh.e2e.public, traceparent=tp or "",
                                      ephemeral_key=exchange.public).SerializeToString()
            flags |= Flag.ENCRYPTED
        elif direct and core.security is not None:  # the router checks it is ours
            header = agp_pb2.Envelope(action=self.action, traceparent=tp or "",
                                      sender_key=core.security.public).SerializeToString()
        else:
            header = mesh._header(self.action, None, tp)
        if direct:
            flags |= Flag.DIRECT
        core.stream_acks[ident] = self._on_credit
        core.start_request(Cmd.STREAM_OPEN, mesh._address(self.dest), header, payload,
                           self._waiter, flags=flags, timeout=self.timeout, ident=ident)
        await self._wait_for(lambda: self._answer is not None)
        p = core.pending.get(ident)
        self.instance = p.instance if p is not None else b""
        answer = self._answer or {}
        if exchange is not None:
            key = answer.get("k", b"")
            if key not in self._recipients or "e" not in answer or "p" not in answer:
                self.abort()
                raise Unauthenticated("the agent did not answer the stream's key exchange "
                                      "with a key the stream was sealed to")
            from security.keys import raw_key
            from security.stream_keys import ChunkSealer

            try:
                stream_key = exchange.finish(raw_key(key), answer["e"], answer["p"])
            except Error:
                self.abort()
                raise
            self._sealer = ChunkSealer(stream_key, ident)
        if direct and "t" in answer:
            self._ticket = answer["t"]
            links = core.direct_links()
            # held for this stream until _finish, which lets the link close once idle
            self._sock = links.link(answer.get("ep", b"").decode(), answer.get("k", b""),
                                    ident)
            links.on_credit[ident] = self._on_direct_credit
            links.on_error[ident] = self._on_direct_error
            try:
                self._send_chunk(pack_route(Cmd.STREAM_OPEN, 0, 0, 0, ident), [])
            except Error:
                self.abort()  # the service's handler is cancelled, the link let go
                raise
        elif self.credits <= 0:
            await self._wait_for(lambda: self.credits > 0)

    async def _bind(self) -> bool:
        """Wait for the agent's credits on the direct connection."""
        if await self._wait_for(lambda: self.credits > 0, BIND_TIMEOUT):
            self.direct = True
            return True
        return False

    # ------------------------------------------------------------------ data
    async def write(self, data: Any, *, raw: bool = False) -> None:
        """Send one chunk, waiting for credit first."""
        if self._ended:
            raise Closed("stream already ended")
        waiter = self._waiter
        assert waiter is not None
        if self.credits <= 0 or waiter.done():  # (done: it failed, or was answered early)
            await self._wait_for(lambda: self.credits > 0 and not waiter.done())
        payload: list[Any] = [data] if raw else codec.encode(data)
        stats = metrics.CLIENT
        nbytes = metrics.payload_bytes(payload) if stats is not None else 0  # as requests: plain
        flags = Flag.RAW if raw else 0
        if self._sealer is not None and self._sock is None:
            # through the router: sealed; peer to peer the CURVE session to the key the
            # stream was sealed to (checked against the registry's) is itself end to end
            payload = self._sealer.seal(payload)
            flags |= Flag.ENCRYPTED
        route = pack_route(Cmd.STREAM_DATA, flags, 0, 0, self.ident)
        self._send_chunk(route, payload)
        self.credits -= 1  # (only now: a chunk refused above never went, nor took credit)
        self.sent += 1
        if raw:
            self.bytes_sent += len(data)
        if stats is not None:
            stats.sent("stream", nbytes)

    def _send_chunk(self, route: bytes, payload: list[Any]) -> None:
        if self._sock is None:
            if self._ticket:  # it was direct, and its link was let go when it finished
                raise Closed("stream already ended")
            self.core.send_frames([route, b"", b"", *payload])
            return
        import zmq

        try:
            self.core.direct_links().send(self._sock, [route, self._ticket, *payload])
        except zmq.Again:
            raise Overloaded("direct stream connection is full") from None
        except zmq.ZMQError as exc:
            raise Unavailable(f"direct stream connection failed: {exc}") from None

    async def close(self) -> Any:
        """End the stream and return the service's result."""
        if self._ended:
            return self._result
        self._ended = True
        assert self._waiter is not None
        try:
            # (done: the answer, or the error, is already in; refused: an END went through
            # the router, _off_direct)
            if not self._waiter.done() and not self._refused:
                self._send_chunk(pack_route(Cmd.STREAM_END, 0, 0, 0, self.ident), [])
            msg = await self._waiter
        finally:
            self._finish()
        from mesh.replies import decode_reply, open_sealed_reply

        if self.mesh.e2e is not None:
            self._result = open_sealed_reply(msg, self._reply_key, self.ident)
        else:
            self._result = decode_reply(msg)
        return self._result

    def abort(self) -> None:
        """Give up: the service's handler is cancelled."""
        if not self._ended:
            self._ended = True
            try:
                self.core.send_frames([pack_route(Cmd.CANCEL, 0, 0, 0, self.ident),
                                       self.instance])
            except Error:  # counted in send_errors, or the client is closed
                pass
            self.core.cancel_request(self.ident)
            self._finish()

    def _finish(self) -> None:
        """Idempotent: the stream takes nothing more; its direct link (if any) is let go,
        and closes once no stream uses it (``DirectLinks.forget``)."""
        self.core.stream_acks.pop(self.ident, None)
        if self._sock is not None:
            self._sock = None
            self.core.direct_links().forget(self.ident)

    async def __aenter__(self) -> AsyncStream:
        return await self.open()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.abort()

    @property
    def result(self) -> Any:
        return self._result
