"""A per-destination circuit breaker: closed -> open -> half-open -> closed.

Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail at
once with CircuitOpen for ``reset_timeout`` seconds. Half-open: ``half_open_max`` trial calls
pass; a success closes it, a failure opens it again. The clock is injected for tests.

A trial slot is held at most ``reset_timeout``: a trial that reported nothing by then (its
caller dropped it without a word) is presumed abandoned and the next call is a new trial, so
one lost outcome cannot leave the breaker half-open, turning every call away, for ever.
A call turned away changes nothing: the trials' outcomes alone decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from mesh.errors import MAYBE_RAN, NEVER_DISPATCHED, CircuitOpen

# errors that say the destination is failing (refused, unreachable, too slow); any other
# error is an answer from it (a handler's own error proves it up)
FAILURES = (*NEVER_DISPATCHED, *MAYBE_RAN)


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, name: str, *, failure_threshold: int = 5, reset_timeout: float = 5.0,
                 half_open_max: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max = half_open_max
        self.clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trials = 0
        self._trial_at = 0.0  # when the last trial slot was taken
        self.transitions = 0

    def before_call(self) -> None:
        """Raise CircuitOpen when the call must not go out."""
        if self.state is State.OPEN:
            if self.clock() - self.opened_at < self.reset_timeout:
                raise CircuitOpen(f"circuit for {self.name} is open")
            self._set(State.HALF_OPEN)
            self._trials = 0
        if self.state is State.HALF_OPEN:
            now = self.clock()
            if self._trials >= self.half_open_max:
                if now - self._trial_at < self.reset_timeout:
                    raise CircuitOpen(f"circuit for {self.name} is half-open, trial in progress")
                self._trials = 0  # no outcome within the open interval: presumed abandoned
            self._trials += 1
            self._trial_at = now

    def on_success(self) -> None:
        self.failures = 0
        if self.state is not State.CLOSED:
            self._set(State.CLOSED)

    def on_failure(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._set(State.OPEN)

    def record(self, exc: BaseException) -> None:
        """A call ended in ``exc``: a failure of the destination, or an answer from it."""
        if isinstance(exc, FAILURES):
            self.on_failure()
        else:
            self.on_success()

    def abandon(self) -> None:
        """The caller gave up on its call: a half-open trial slot goes back (open again,
        half-open later) instead of waiting for an outcome that will not come."""
        if self.state is State.HALF_OPEN:
            self.on_failure()

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.transitions += 1
