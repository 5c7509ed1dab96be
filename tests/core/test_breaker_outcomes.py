"""Only the trials decide a half-open breaker, and a call that ends without a word from its
destination is no outcome: first fed by hand on an injected clock, then through the real
callers (``request``, ``request_nowait``, the workflow step caller) against a router run in
this process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agents.step_caller import MeshStepCaller
from mesh.aio import AsyncMesh
from mesh.breaker import CircuitBreaker, State
from mesh.errors import (
    CircuitOpen,
    Closed,
    DeadlineExceeded,
    HandlerError,
    NoSuchService,
    TooLarge,
    Unavailable,
)
from router.server import Router
from tests.helpers import router_in_thread


def _breaker(half_open_max: int = 1) -> tuple[CircuitBreaker, list[float]]:
    now = [0.0]
    return CircuitBreaker("svc", failure_threshold=3, reset_timeout=5.0,
                          half_open_max=half_open_max, clock=lambda: now[0]), now


def _open(b: CircuitBreaker, now: list[float]) -> list[int]:
    """Open ``b`` by three failures; the tickets of three more calls that were in flight."""
    late = [b.before_call() for _ in range(3)]
    for _ in range(3):
        b.record(Unavailable("gone"), b.before_call())
    assert b.state is State.OPEN
    return late


# ---------------------------------------------------------------- (a) late outcomes
def test_a_late_failure_of_a_call_from_before_the_opening_does_not_reopen_a_half_open_one(
        ) -> None:
    b, now = _breaker()
    late = _open(b, now)
    now[0] += 5.0
    trial = b.before_call()
    b.record(Unavailable("in flight since before"), late[0])
    assert b.state is State.HALF_OPEN  # not the trial: it does not decide
    b.on_success(trial)
    assert b.state is State.CLOSED


def test_a_late_success_does_not_close_it_and_a_late_abandon_leaves_the_trial_alone() -> None:
    b, now = _breaker()
    late = _open(b, now)
    now[0] += 5.0
    trial = b.before_call()
    b.on_success(late[0])
    assert b.state is State.HALF_OPEN
    b.abandon(late[1])  # gives back no slot it never held
    with pytest.raises(CircuitOpen):
        b.before_call()  # the trial is still out
    b.record(Unavailable("still gone"), trial)
    assert b.state is State.OPEN


def test_late_outcomes_while_open_neither_close_it_nor_stretch_its_interval() -> None:
    b, now = _breaker()
    late = _open(b, now)
    opened_at = b.opened_at
    now[0] += 4.0
    b.record(Unavailable("late"), late[0])
    b.on_success(late[1])
    assert (b.state, b.opened_at) == (State.OPEN, opened_at)
    now[0] += 1.0
    b.before_call()  # on time: the interval counts from the opening
    assert b.state is State.HALF_OPEN


def test_late_outcomes_still_count_while_closed() -> None:
    b, now = _breaker()
    late = _open(b, now)
    now[0] += 5.0
    b.on_success(b.before_call())
    assert (b.state, b.failures) == (State.CLOSED, 0)
    for ticket in late:
        b.record(Unavailable("late"), ticket)
    assert b.state is State.OPEN  # three failures in a row, whenever they were admitted


def test_a_trial_presumed_abandoned_reports_too_late_to_decide() -> None:
    b, now = _breaker()
    _open(b, now)
    now[0] += 5.0
    first = b.before_call()
    now[0] += 5.0
    second = b.before_call()  # the first said nothing within the interval
    b.on_success(first)
    assert b.state is State.HALF_OPEN
    b.abandon(first)  # nor does it give back the second's slot
    with pytest.raises(CircuitOpen):
        b.before_call()
    b.on_success(second)
    assert b.state is State.CLOSED


def test_with_several_trials_the_first_outcome_decides_and_the_others_come_late() -> None:
    b, now = _breaker(half_open_max=2)
    _open(b, now)
    now[0] += 5.0
    t1, t2 = b.before_call(), b.before_call()
    b.record(Unavailable("gone"), t1)
    assert b.state is State.OPEN
    b.on_success(t2)  # the other trial, answered after the breaker opened again
    assert b.state is State.OPEN


# ---------------------------------------------------------------- (b) local errors
@pytest.mark.parametrize("exc", [TooLarge("never sent"), Closed("client closed")])
def test_a_local_error_of_the_trial_gives_its_slot_back(exc: Exception) -> None:
    b, now = _breaker()
    _open(b, now)
    now[0] += 5.0
    b.record(exc, b.before_call())
    assert b.state is State.HALF_OPEN  # neither closed (never reached it) nor re-opened
    trial = b.before_call()  # the slot is free at once
    b.record(Unavailable("gone"), trial)
    assert b.state is State.OPEN


def test_a_local_error_while_closed_neither_counts_nor_clears_failures() -> None:
    b, _ = _breaker()
    for _ in range(2):
        b.record(Unavailable("gone"), b.before_call())
    b.record(TooLarge("never sent"), b.before_call())
    b.record(Closed("client closed"), b.before_call())
    assert (b.state, b.failures) == (State.CLOSED, 2)
    b.record(HandlerError("an answer"), b.before_call())
    assert b.failures == 0


# ---------------------------------------------------------------- (c) abandon
def test_an_abandoned_trial_gives_its_slot_back_without_reopening() -> None:
    b, now = _breaker()
    _open(b, now)
    now[0] += 5.0
    b.abandon(b.before_call())
    assert b.state is State.HALF_OPEN
    b.on_success(b.before_call())  # a new trial at once, not after another interval
    assert b.state is State.CLOSED


# ---------------------------------------------------------------- through the real callers
PING = "agp/router"  # answered by the router itself: no agent needed
NOBODY = "test/outcomes/nobody"  # the router answers NoSuchService: a failure


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread(max_message_bytes=4096) as r:
        yield r


def _half_open_by_hand(m: AsyncMesh, dest: str) -> tuple[CircuitBreaker, int]:
    """Open ``dest``'s breaker, its interval past, and take the trial: the call already in
    flight is not it."""
    b = m.breaker(dest)
    assert b is not None
    for _ in range(b.failure_threshold):
        b.on_failure()
    b.opened_at -= b.reset_timeout + 1.0
    return b, b.before_call()


async def _late(m: AsyncMesh, dest: str, call: Any) -> tuple[CircuitBreaker, int, Any]:
    """Start ``call`` (a coroutine), turn the breaker half-open by hand while it is in
    flight, and let it end: the breaker, the trial's ticket, and the call's reply or
    error. The call's first step (up to the send) runs in the same loop turn as the turn to
    half-open, before any reply can be read."""
    held: list[tuple[CircuitBreaker, int]] = []

    def in_flight() -> None:
        assert m.core.pending, "the call has been sent and waits for its reply"
        held.append(_half_open_by_hand(m, dest))

    task = asyncio.ensure_future(call)
    asyncio.get_running_loop().call_soon(in_flight)
    try:
        outcome: Any = await task
    except Exception as exc:  # noqa: BLE001 - the call's own error is its outcome here
        outcome = exc
    return (*held[0], outcome)


@pytest.mark.parametrize(("dest", "outcome"), [(PING, str), (NOBODY, NoSuchService)])
def test_a_request_in_flight_when_the_breaker_opened_does_not_decide_it(
        router: Router, dest: str, outcome: type) -> None:
    async def main() -> tuple[Any, CircuitBreaker, int]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            return await _late(m, dest, m.request(dest, "ping", timeout=5))

    b, trial, result = asyncio.run(main())
    assert isinstance(result, outcome)
    assert b.state is State.HALF_OPEN
    b.on_success(trial)  # the trial's own outcome decides
    assert b.state is State.CLOSED


@pytest.mark.parametrize(("dest", "outcome"), [(PING, str), (NOBODY, NoSuchService)])
def test_a_request_nowait_in_flight_when_the_breaker_opened_does_not_decide_it(
        router: Router, dest: str, outcome: type) -> None:
    async def main() -> tuple[Any, State]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            future = m.request_nowait(dest, "ping", timeout=5)
            b, _ = _half_open_by_hand(m, dest)  # sent already; no reply read before we await
            try:
                result: Any = await future
            except Exception as exc:  # noqa: BLE001
                result = exc
            return result, b.state

    result, state = asyncio.run(main())
    assert isinstance(result, outcome)
    assert state is State.HALF_OPEN


def test_a_step_in_flight_when_the_breaker_opened_does_not_decide_it(router: Router) -> None:
    async def main() -> tuple[Any, State]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            caller = MeshStepCaller(m)
            b, _, result = await _late(m, NOBODY, caller.request(
                NOBODY, "run", {}, "run/step", 5.0, lambda *_: None))
            return result, b.state

    result, state = asyncio.run(main())
    assert isinstance(result, NoSuchService)
    assert state is State.HALF_OPEN


def test_a_trial_refused_unsent_as_too_large_gives_its_slot_back(router: Router) -> None:
    async def main() -> tuple[State, State, State]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            b = m.breaker(PING)
            assert b is not None
            for _ in range(b.failure_threshold):
                b.on_failure()
            b.opened_at -= b.reset_timeout + 1.0
            with pytest.raises(TooLarge):
                await m.request(PING, "ping", b"x" * 20_000, raw=True, timeout=5)
            after_request = b.state
            with pytest.raises(TooLarge):
                await m.request_nowait(PING, "ping", b"x" * 20_000, raw=True, timeout=5)
            after_nowait = b.state
            await m.request(PING, "ping", timeout=5)  # the slot is free: this trial decides
            return after_request, after_nowait, b.state

    assert asyncio.run(main()) == (State.HALF_OPEN, State.HALF_OPEN, State.CLOSED)


def test_a_trial_that_never_leaves_gives_its_slot_back_without_reopening(
        router: Router) -> None:
    """Replaces the expectation of test_client_faults' trial-slot test: a trial refused
    before it is sent (its deadline, its payload) leaves the breaker half-open with the slot
    free, so the next call is the trial at once, not after another open interval."""
    async def main() -> list[State]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            b, _ = _half_open_by_hand(m, PING)
            b.abandon()  # (the trial taken by hand: given back)
            seen = []
            with pytest.raises(DeadlineExceeded):
                await m.request(PING, "ping", timeout=0)
            seen.append(b.state)
            with pytest.raises(TypeError):
                m.request_nowait(PING, "ping", object())
            seen.append(b.state)
            await m.request_nowait(PING, "ping", timeout=5)  # no interval to wait out
            seen.append(b.state)
            return seen

    assert asyncio.run(main()) == [State.HALF_OPEN, State.HALF_OPEN, State.CLOSED]
