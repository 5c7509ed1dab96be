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
from mesh.replies import decode_reply, open_sealed_reply
from mesh.service_keys import ServiceKeys
from mesh.wire import Cmd, Flag

_ENCRYPTED = int(Flag.ENCRYPTED)


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

    __slots__ = ("future", "decode", "breaker", "ticket", "keys", "dest")

    def __init__(self, future: ReplyFuture, decode: Any, breaker: CircuitBreaker | None,
                 keys: ServiceKeys | None = None, dest: str = "", ticket: int = 0) -> None:
        self.future = future
        self.decode = decode  # msg -> the caller's value (opens a sealed reply)
        self.breaker = breaker
        self.ticket = ticket  # the breaker's, from before_call: only a trial's outcome decides
        self.keys, self.dest = keys, dest  # a sealed request: the keys it was sealed for

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, msg: list[bytes]) -> None:
        future = self.future
        if future.done():
            return
        if self.breaker is not None:
            self.breaker.on_success(self.ticket)
        try:
            value = self.decode(msg)
        except Exception as exc:  # the caller's error (forged, undecodable), as from request
            future.set_exception(exc)
        else:
            future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        if self.keys is not None:
            self.keys.refused(self.dest, exc)  # no retry here; the next call looks them up
        future = self.future
        if future.done():
            return
        if self.breaker is not None:
            self.breaker.record(exc, self.ticket)
        future.set_exception(exc)


class NowaitRequests:
    """``request_nowait``, a mixin of :class:`mesh.aio.AsyncMesh`."""

    # provided by AsyncMesh
    core: Core
    e2e: Any
    _loop: Any
    _address: Any
    breaker: Any
    request: Any
    _header: Any
    service_keys: ServiceKeys
    _seal: Any
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
        sealed = dest not in self._never_sealed and self.e2e is not None
        recipients = self.service_keys.fresh(dest) if sealed else None
        if telemetry.ENABLED or metrics.CLIENT is not None or (sealed and recipients is None):
            return loop.create_task(self.request(
                dest, action, data, timeout=timeout, raw=raw, idempotent=idempotent,
                idempotency_key=idempotency_key))
        address = self._address(dest)
        breaker = self.breaker(dest)
        ticket = 0 if breaker is None else breaker.before_call(timeout)
        try:  # every way out from here reports to the breaker (a half-open trial slot)
            core = self.core
            payload: list[Any] = [data] if raw else codec.encode(data)
            flags = flags_for(raw, idempotent or idempotency_key is not None)
            ident = core.next_id()
            if recipients is not None:
                header, payload, reply_key = self._seal(recipients, action, ident, payload,
                                                        idempotency_key)
                flags |= _ENCRYPTED

                def decode(msg: list[bytes]) -> Any:
                    return open_sealed_reply(msg, reply_key, ident)
            else:
                header = self._header(action, idempotency_key)
                decode = decode_reply
            keys = None if recipients is None else self.service_keys
            future = ReplyFuture(loop=loop)

            def on_cancel() -> None:
                core.cancel_request(ident)
                if breaker is not None:
                    breaker.abandon(ticket)

            future.on_cancel = on_cancel
            core.start_request(Cmd.REQUEST, address, header, payload,
                               ReplyWaiter(future, decode, breaker, keys, dest, ticket),
                               flags=flags, timeout=timeout, ident=ident)
        except BaseException:
            if breaker is not None:
                breaker.abandon(ticket)  # not sent: no outcome will come for this trial
            raise
        return future
