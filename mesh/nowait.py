"""Requests without a coroutine: what ``AsyncMesh.request_nowait`` hands back.

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

from mesh.breaker import CircuitBreaker
from mesh.errors import DeadlineExceeded, InternalError, NoSuchService, Overloaded, Unavailable

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
