"""What a handler gets: the ``@action`` mark, and ``Context`` (deadline, progress, cancel).

Kept apart from ``agents.base`` so a handler's view of its call reads on its own; both
names are re-exported there (``from agents.base import Context, action``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mesh import codec
from mesh.errors import Cancelled
from mesh.wire import Cmd, pack_route

if TYPE_CHECKING:
    from agents.base import Agent
    from proto import agp_pb2


def action(name: str | None = None, *, stream: bool = False, inline: bool = False
           ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of an action (default: the method's name)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._agp_action = (name or fn.__name__, stream, inline)  # type: ignore[attr-defined]
        return fn

    return mark


class Context:
    """What a handler knows about the call it serves."""

    __slots__ = ("agent", "crid", "ident", "action", "deadline", "envelope", "params",
                 "_event", "_is_cancelled", "reply_key", "reply_to", "span", "started")

    def __init__(self, agent: Agent, crid: bytes, ident: int, action: str, deadline: float,
                 envelope: agp_pb2.Envelope) -> None:
        self.agent = agent
        self.crid = crid
        self.ident = ident
        self.action = action
        self.deadline = deadline
        self.envelope = envelope
        self.params: Any = None
        self._event: threading.Event | None = None  # made only when a handler waits on it
        self._is_cancelled = False
        self.span: Any = None  # the server span, when tracing is on
        self.started = 0.0  # loop time of arrival, when metrics are on
        self.reply_to = b""  # the caller's key when its payload was sealed end to end
        self.reply_key: Any = None  # then the key of its one answer (security.payload)

    @property
    def cancelled(self) -> bool:
        return self._is_cancelled

    def cancel(self) -> None:
        self._is_cancelled = True
        if self._event is not None:
            self._event.set()

    def wait_cancelled(self, timeout: float) -> bool:
        """Block a thread-pool handler up to ``timeout`` s; True once the call is cancelled."""
        if self._event is None:
            self._event = threading.Event()
            if self._is_cancelled:
                self._event.set()
        return self._event.wait(timeout)

    def remaining(self) -> float:
        """Seconds left before the caller's deadline."""
        assert self.agent.loop is not None
        return self.deadline - self.agent.loop.time()

    def progress(self, fraction: float, message: str = "") -> None:
        """Tell the caller how far along this call is; raise Cancelled if it gave up."""
        if self._is_cancelled:
            raise Cancelled(f"{self.action} cancelled by the caller")
        frames = [pack_route(Cmd.PROGRESS, 0, 0, 0, self.ident), self.crid, b"",
                  *codec.encode({"fraction": float(fraction), "message": message})]
        self.agent._send_threadsafe(frames)
