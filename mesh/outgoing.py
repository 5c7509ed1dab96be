"""What a client connection sends: at once, or coalesced with the rest of its loop turn.

A mixin of :class:`mesh.core.Core`. The first message of a loop turn leaves at once (a lone
request waits for nothing); the ones after it wait for the turn's end and leave together as
one BATCH (``mesh.batch``), so a burst costs one send and one wake-up downstream. libzmq's FD
is edge-triggered and a send may consume the edge, so the turn's end looks at ``EVENTS`` once.
What cannot be sent is reported, never dropped silently: its request fails (``Overloaded``,
``Closed``, ``Unavailable``) or ``on_unsent`` hears of it, and ``send_errors`` counts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

from mesh import batch
from mesh.errors import Closed, Error, Overloaded, Unavailable
from mesh.session import _fail
from mesh.wire import ROUTE
from mesh.zmqio import readable, send_frames

QUEUE_FULL = "outgoing queue to the router is full (router unreachable?)"


class Outgoing:
    """Sending for :class:`mesh.core.Core`: ``send_frames``, ``queue_frames``, ``flush``."""

    # provided by Core
    loop: asyncio.AbstractEventLoop | None
    sock: zmq.Socket[Any] | None
    batching: bool
    pending: dict[int, Any]
    counters: dict[str, int]
    on_unsent: Callable[[list[Any]], None] | None
    _outbox: batch.Outbox
    _coalescing: bool
    _turn_ending: bool
    _sent: bool
    _drain_scheduled: bool
    _on_readable: Any

    def send_frames(self, frames: list[Any]) -> None:
        """Send now (after whatever is queued); raise Overloaded when the outgoing queue is
        full, Closed after close()."""
        sock = self.sock
        if sock is None:
            raise Closed("client closed")
        if self._outbox:
            self._send_outbox()
        try:
            send_frames(sock, frames)
        except zmq.Again:
            self.counters["send_errors"] += 1
            raise Overloaded(QUEUE_FULL) from None
        finally:
            self._after_send()

    def queue_frames(self, frames: list[Any]) -> None:
        """Send now, or coalesced with what else leaves in this loop turn (``mesh.batch``).

        The first message of a turn goes at once (a lone request waits for nothing); the
        ones after it wait for the turn's flush and leave together. One that cannot go then
        is reported: its request fails with Overloaded, anything else goes to ``on_unsent``
        and is counted."""
        if not self.batching or not self._coalescing:
            self.send_frames(frames)  # schedules _end_turn, even when it raises Overloaded
            # this turn has begun sending: what follows waits for its end (_end_turn)
            self._coalescing = self.batching
            return
        size = batch.batchable(frames)
        if size < 0:
            self.send_frames(frames)
        elif self._outbox.add(None, frames, size):
            self._send_outbox()

    def flush(self) -> None:
        """Send what is queued: the turn (or the drain holding its answers) is over."""
        self._coalescing = False
        if self._outbox:
            self._send_outbox()

    def _send_outbox(self) -> None:
        """One message as itself, several as a BATCH."""
        messages = self._outbox.take(None)
        sock = self.sock
        if sock is None:
            self._unsent(messages, Closed("client closed"))
            return
        try:
            send_frames(sock, batch.wire(messages))
        except zmq.Again:
            self._unsent(messages, Overloaded(QUEUE_FULL))
        except zmq.ZMQError as exc:
            self._unsent(messages, Unavailable(f"send failed: {exc}"))
        self._after_send()

    def _after_send(self) -> None:
        self._sent = True
        if not self._turn_ending:
            self._turn_ending = True
            self.loop.call_soon(self._end_turn)  # type: ignore[union-attr]

    def _end_turn(self) -> None:
        """After a loop turn that sent: send what it queued, then look at EVENTS once
        (libzmq's FD is edge-triggered and a send may consume the edge), however many
        messages the turn sent. One callback for both: it runs for every request."""
        self.flush()  # schedules no second _end_turn: this one looks at EVENTS
        self._turn_ending = False
        sock = self.sock
        if sock is not None and not self._drain_scheduled and readable(sock):
            self._on_readable()

    def _unsent(self, messages: list[list[Any]], exc: Error) -> None:
        """Report queued messages that could not be sent: nothing is dropped silently."""
        for frames in messages:
            self.counters["send_errors"] += 1
            ident = ROUTE.unpack(frames[0])[5]
            p = self.pending.get(ident)
            if p is not None and p.frames is frames:
                del self.pending[ident]
                _fail(p.waiter, exc)
            elif self.on_unsent is not None:
                self.on_unsent(frames)
