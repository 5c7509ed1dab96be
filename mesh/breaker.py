"""A per-destination circuit breaker: closed -> open -> half-open -> closed.

Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail at
once with CircuitOpen for ``reset_timeout`` seconds. Half-open: ``half_open_max`` trial calls
pass; a success closes it, a failure opens it again. The clock is injected for tests.

Only the trials decide: ``before_call`` hands each call a ticket (the breaker's epoch, moved
on by every transition) that the caller passes back with its outcome. A call admitted before
the latest transition (in flight when the breaker opened, say) still counts while closed, but
its late outcome neither closes nor re-opens an open or half-open breaker. A call that ends
with no word from the destination (its caller gave up, the message was never sent, this client
closed) is no outcome: a trial's slot goes back for the next call.

A trial slot is held at most ``reset_timeout``, or the trial's own deadline (``hold``) when
that is longer: a trial that reported nothing by then (its caller dropped it without a word)
is presumed abandoned and the next call is a new trial, so one lost outcome cannot leave the
breaker half-open, turning every call away, for ever. Held only ``reset_timeout``, a trial
slower than that (a destination whose calls take longer) was superseded before it answered,
its answer ignored as too late, and under steady traffic the breaker never closed.
A call turned away changes nothing: the trials' outcomes alone decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from mesh.errors import MAYBE_RAN, NEVER_DISPATCHED, CircuitOpen, Closed, TooLarge

# errors that say the destination is failing (refused, unreachable, too slow); any other
# error is an answer from it (a handler's own error proves it up)
FAILURES = (*NEVER_DISPATCHED, *MAYBE_RAN)
# errors that say nothing about the destination: the message was never sent or was refused
# for its size, or this client closed under the call
NO_OUTCOME = (TooLarge, Closed)


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
        self._trial_until = 0.0  # past this, the trial slots taken are presumed abandoned
        self._epoch = 0  # a call's ticket: moved on by each transition and each new trial round
        self.transitions = 0

    def before_call(self, hold: float = 0.0) -> int:
        """Raise CircuitOpen when the call must not go out; else the call's ticket, to pass
        back with its outcome (``record``, ``on_success``, ``on_failure``, ``abandon``).
        ``hold``: the call's own timeout, by which its caller reports (a trial's slot is kept
        that long, at least ``reset_timeout``)."""
        if self.state is State.CLOSED:
            return self._epoch
        now = self.clock()
        if self.state is State.OPEN:
            if now - self.opened_at < self.reset_timeout:
                raise CircuitOpen(f"circuit for {self.name} is open")
            self._set(State.HALF_OPEN)
            self._trials = 0
        if self._trials >= self.half_open_max:
            if now < self._trial_until:
                raise CircuitOpen(f"circuit for {self.name} is half-open, trial in progress")
            # no outcome within its deadline: presumed abandoned, and too late to decide
            self._trials = 0
            self._epoch += 1
        until = now + max(self.reset_timeout, hold)
        self._trial_until = until if self._trials == 0 else max(self._trial_until, until)
        self._trials += 1
        return self._epoch

    def on_success(self, ticket: int | None = None) -> None:
        """The destination answered. ``ticket`` None: an outcome fed by hand, taken as a
        trial's."""
        if self.state is State.CLOSED:
            self.failures = 0
            return
        if ticket is not None and ticket != self._epoch:
            return  # admitted before the latest transition: not a trial, it does not decide
        self.failures = 0
        self._set(State.CLOSED)

    def on_failure(self, ticket: int | None = None) -> None:
        """The destination failed the call (refused, unreachable, too slow)."""
        if self.state is not State.CLOSED and ticket is not None and ticket != self._epoch:
            return  # not a trial: it neither re-opens nor keeps open
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._set(State.OPEN)

    def record(self, exc: BaseException, ticket: int | None = None) -> None:
        """A call ended in ``exc``: a failure of the destination, an answer from it, or (the
        message never sent, the client closed) no outcome at all."""
        if isinstance(exc, NO_OUTCOME):
            self.abandon(ticket)
        elif isinstance(exc, FAILURES):
            self.on_failure(ticket)
        else:
            self.on_success(ticket)

    def abandon(self, ticket: int | None = None) -> None:
        """The call ends with no outcome (its caller gave up, or it never left): a half-open
        trial's slot goes back, for the next call to try, instead of waiting for an outcome
        that will not come. A cancel says nothing about the destination: nothing else changes."""
        if (self.state is State.HALF_OPEN and self._trials > 0
                and (ticket is None or ticket == self._epoch)):
            self._trials -= 1

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.transitions += 1
            self._epoch += 1
