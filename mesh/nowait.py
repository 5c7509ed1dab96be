"""Requests without a coroutine: ``AsyncMesh.request_nowait`` and the Future it hands back.

Awaiting ``AsyncMesh.request`` costs a coroutine frame, and a caller that keeps thousands of
requests going (a load generator, a fan-out) also makes a Task for each; the core resolves a
waiting future, which wakes the Task, which decodes the reply into the caller's result. Here
the request is sent at once and its reply is decoded straight into the one Future the caller
holds, inside the callback that received it: same wire, same sealing, same typed errors, and
a fraction of the interpreter's work. No retries: a retry needs something to wait in (use
``request(..., retries=n)``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mesh import codec, metrics, telemetry
from mesh.breaker import CircuitBreaker
from mesh.core import Core, flags_for
from mesh.errors import DeadlineExceeded, InternalError, NoSuchService, Overloaded, Unavailable
from mesh.replies import decode_reply, open_sealed_reply
from mesh.wire import Cmd, Flag, with_nonce

_ENCRYPTED = int(Flag.ENCRYPTED)

# what says the destination itself is failing (the breaker counts these against it)
_AGAINST_DEST = (Overloaded, NoSuchService, Unavailable, DeadlineExceeded, InternalError)


class ReplyFuture(asyncio.Future):  # type: ignore[type-arg]
    """The caller's future; cancelling it tells the instance to stop, as cancelling an
    awaited ``request`` does."""

    on_cancel: Any = None  # tells the core (and the breaker) the caller gave up

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        if self.on_cancel is not None:
            self.on_cancel()
        return True


class ReplyWaiter:
    """What the core resolves with a REPLY's frames (or fails with an error): it decodes
    the frames with ``decode`` into ``future`` and tells the destination's breaker."""

    __slots__ = ("future", "decode", "breaker")

    def __init__(self, future: ReplyFuture, decode: Any, breaker: CircuitBreaker | None
                 ) -> None:
        self.future = future
        self.decode = decode  # msg -> the caller's value (opens a sealed reply)
        self.breaker = breaker

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, msg: list[bytes]) -> None:
        future = self.future
        if future.done():
            return
        if self.breaker is not None:
            self.breaker.on_success()
        try:
            value = self.decode(msg)
        except Exception as exc:  # the caller's error (forged, undecodable), as from request
            future.set_exception(exc)
        else:
            future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        future = self.future
        if future.done():
            return
        breaker = self.breaker
        if breaker is not None:
            if isinstance(exc, _AGAINST_DEST):
                breaker.on_failure()
            else:
                breaker.on_success()  # the destination answered, if with an error
        future.set_exception(exc)


class NowaitRequests:
    """``request_nowait``, a mixin of :class:`mesh.aio.AsyncMesh`."""

    # provided by AsyncMesh
    core: Core
    e2e: Any
    _keys: dict[str, tuple[float, list[bytes]]]
    _loop: Any
    _address: Any
    breaker: Any
    request: Any
    _header: Any
    _sealed_header: Any
    _never_sealed: frozenset[str]

    def request_nowait(self, dest: str, action: str, data: Any = None, *,
                       timeout: float = 10.0, raw: bool = False, idempotent: bool = False,
                       idempotency_key: str | None = None) -> asyncio.Future[Any]:
        """Send a request now and return a Future of its decoded reply, without a coroutine
        or a Task per call: for callers that keep many requests going.

        The Future fails with the same typed errors ``request`` raises; cancelling it tells
        the instance to stop. No retries. What refuses the call before it is sent raises at
        once (a bad name, an open circuit). The first request to a destination whose keys
        are not known yet, or one traced or counted by ``mesh.telemetry`` / ``mesh.metrics``,
        runs as a Task of ``request`` (a Task is a Future too).
        """
        loop = self._loop()
        boxes = None if dest in self._never_sealed else self.e2e
        hit = self._keys.get(dest) if boxes is not None else None
        if (telemetry.ENABLED or metrics.CLIENT is not None
                or (boxes is not None and (hit is None or hit[0] <= loop.time()))):
            return loop.create_task(self.request(
                dest, action, data, timeout=timeout, raw=raw, idempotent=idempotent,
                idempotency_key=idempotency_key))
        address = self._address(dest)
        breaker = self.breaker(dest)
        if breaker is not None:
            breaker.before_call()
        core = self.core
        payload: list[Any] = [data] if raw else codec.encode(data)
        flags = flags_for(raw, idempotent or idempotency_key is not None)
        ident = core.next_id()
        if boxes is not None:
            assert hit is not None
            aad = action.encode() + b"\0" + ident.to_bytes(8, "little")
            blob, payload, reply_key = boxes.seal(hit[1], payload, aad)
            header = with_nonce(self._sealed_header(action, idempotency_key, None), blob)
            flags |= _ENCRYPTED

            def decode(msg: list[bytes]) -> Any:
                return open_sealed_reply(msg, reply_key, ident)
        else:
            header = self._header(action, idempotency_key)
            decode = decode_reply
        future = ReplyFuture(loop=loop)

        def on_cancel() -> None:
            core.cancel_request(ident)
            if breaker is not None and breaker.state.value == "half_open":
                breaker.on_failure()  # give the trial slot back, as request does

        future.on_cancel = on_cancel
        core.start_request(Cmd.REQUEST, address, header, payload,
                           ReplyWaiter(future, decode, breaker), flags=flags,
                           timeout=timeout, ident=ident)
        return future
