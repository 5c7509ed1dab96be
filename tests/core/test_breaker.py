"""The circuit breaker fed outcomes by hand, on an injected clock."""

from __future__ import annotations

import pytest

from mesh.breaker import CircuitBreaker, State
from mesh.errors import CircuitOpen, HandlerError, Overloaded, Unavailable


def _breaker() -> tuple[CircuitBreaker, list[float]]:
    now = [0.0]
    return CircuitBreaker("svc", failure_threshold=3, reset_timeout=5.0,
                          clock=lambda: now[0]), now


def _half_open(b: CircuitBreaker, now: list[float]) -> None:
    for _ in range(3):
        b.record(Unavailable("gone"))
    now[0] += 5.0
    b.before_call()  # the trial call
    assert b.state is State.HALF_OPEN


def test_failures_of_the_destination_open_it_and_its_own_answers_do_not() -> None:
    b, _ = _breaker()
    for _ in range(5):
        b.record(HandlerError("poison input"))  # the destination answered
    assert b.state is State.CLOSED
    for _ in range(3):
        b.record(Overloaded("full"))
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpen):
        b.before_call()


def test_a_half_open_trial_answered_with_a_handler_error_closes_it() -> None:
    b, now = _breaker()
    _half_open(b, now)
    b.record(HandlerError("poison input"))
    assert b.state is State.CLOSED


def test_an_abandoned_trial_gives_its_slot_back_without_opening_again() -> None:
    b, now = _breaker()
    _half_open(b, now)
    with pytest.raises(CircuitOpen):
        b.before_call()  # one trial at a time
    b.abandon()  # its caller gave up: that says nothing about the destination
    assert b.state is State.HALF_OPEN
    b.before_call()  # a new trial at once, not stuck half-open
    with pytest.raises(CircuitOpen):
        b.before_call()


def test_abandoning_a_call_on_a_closed_breaker_changes_nothing() -> None:
    b, _ = _breaker()
    b.abandon()
    assert (b.state, b.failures) == (State.CLOSED, 0)


def test_a_trial_that_never_reports_lets_another_through_after_the_open_interval() -> None:
    b, now = _breaker()
    _half_open(b, now)  # its caller drops it without a word: no outcome, no abandon
    transitions = b.transitions
    for _ in range(3):
        now[0] += 1.0
        with pytest.raises(CircuitOpen):
            b.before_call()  # turned away while the trial may still run: nothing changes
    assert (b.state, b.transitions) == (State.HALF_OPEN, transitions)
    now[0] += 2.0  # the open interval since the trial went out: presumed abandoned
    b.before_call()  # a new trial, not stuck half-open for ever
    with pytest.raises(CircuitOpen):
        b.before_call()  # and only one at a time again
    b.record(Unavailable("still gone"))  # its outcome decides
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpen):
        b.before_call()
    now[0] += 5.0
    b.before_call()
    b.on_success()
    assert b.state is State.CLOSED
