"""A half-open breaker's trial slower than ``reset_timeout`` still decides it: its slot is
held while the trial's own deadline has not passed, so the next caller is turned away instead
of being made a new trial that supersedes it (then the trial's success was ignored, and under
steady traffic to a destination slower than ``reset_timeout`` the breaker never closed).

First fed by hand on an injected clock, then through the real callers (``request``,
``request_nowait``, the workflow step caller) against a router run in this process, the
breaker's clock injected so that no test waits out an interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agents.step_caller import MeshStepCaller
from mesh.aio import AsyncMesh
from mesh.breaker import CircuitBreaker, State
from mesh.errors import CircuitOpen, Overloaded, Unavailable
from mesh.wire import Cmd
from proto import agp_pb2
from router.server import Router
from tests.helpers import router_in_thread

PING = "agp/router"  # answered by the router itself: no agent needed


def _opened(b: CircuitBreaker, now: list[float]) -> None:
    for _ in range(b.failure_threshold):
        b.record(Unavailable("gone"), b.before_call())
    assert b.state is State.OPEN
    now[0] += b.reset_timeout


def test_a_trial_within_its_own_deadline_keeps_its_slot_and_decides() -> None:
    now = [0.0]
    b = CircuitBreaker("svc", failure_threshold=3, reset_timeout=5.0, clock=lambda: now[0])
    _opened(b, now)
    trial = b.before_call(hold=30.0)  # a call that may take up to 30 s
    now[0] += 6.0  # slower than reset_timeout, well within its deadline
    with pytest.raises(CircuitOpen):
        b.before_call(hold=30.0)  # still one trial at a time
    b.on_success(trial)
    assert b.state is State.CLOSED


def test_a_trial_past_its_own_deadline_is_presumed_abandoned() -> None:
    now = [0.0]
    b = CircuitBreaker("svc", failure_threshold=3, reset_timeout=5.0, clock=lambda: now[0])
    _opened(b, now)
    b.before_call(hold=8.0)  # its caller drops it without a word
    now[0] += 7.0
    with pytest.raises(CircuitOpen):
        b.before_call()
    now[0] += 1.0
    second = b.before_call()  # not stuck half-open: a new trial
    b.on_success(second)
    assert b.state is State.CLOSED


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def _trial_call(m: AsyncMesh, how: str) -> Any:
    """The trial, as each caller makes it, with a 30 s deadline."""
    if how == "request":
        return asyncio.ensure_future(m.request(PING, "ping", timeout=30))
    if how == "nowait":
        return m.request_nowait(PING, "ping", timeout=30)
    return asyncio.ensure_future(MeshStepCaller(m).request(
        PING, "ping", {}, "run/step", 30.0, lambda *_: None))


@pytest.mark.parametrize("how", ["request", "nowait", "step"])
def test_a_slow_trial_through_a_real_caller_closes_the_breaker(router: Router,
                                                                how: str) -> None:
    async def main() -> tuple[Any, State]:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            b = m.breaker(PING)
            assert b is not None
            now = [0.0]
            b.clock = lambda: now[0]
            _opened(b, now)
            trial = _trial_call(m, how)
            turned_away: list[Any] = []

            def later() -> None:  # the trial sent, its reply not read yet
                assert m.core.pending, "the trial has been sent and waits for its reply"
                now[0] += b.reset_timeout + 1.0  # the destination is slower than that
                try:
                    turned_away.append(m.request_nowait(PING, "ping", timeout=30))
                except CircuitOpen as exc:
                    turned_away.append(exc)

            asyncio.get_running_loop().call_soon(later)
            await trial
            if isinstance(turned_away[0], asyncio.Future):
                await turned_away[0]
            return turned_away[0], b.state

    second, state = asyncio.run(main())
    assert isinstance(second, CircuitOpen)  # one trial at a time, while it may still run
    assert state is State.CLOSED  # and its answer decides


# ---------------------------------------------------------------- the step caller's retry
SVC = "test/review/svc"


def test_a_step_retry_is_not_pinned_to_an_instance_with_no_free_slot(
        router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY may say 0 free slots (every thread past its deadline, unseen by a restarted
    router): such an instance, with nothing in flight, is not the least loaded one, and a
    step's retry addressed to it was refused at once (instance at capacity) while another
    instance had room."""
    monkeypatch.delenv("AGP_IDENTITY", raising=False)

    async def main() -> tuple[str, Any]:
        agents = [await AsyncMesh.connect(router.endpoint, breakers=False, kind=agp_pb2.AGENT)
                  for _ in range(2)]
        try:
            for m, name, free in zip(agents, ("y", "z"), (0, 4), strict=True):
                waiter = asyncio.get_running_loop().create_future()
                header = agp_pb2.Ready(service=SVC, instance=name, capacity=4, free_slots=free)
                m.core.start_request(Cmd.READY, SVC.encode(), header.SerializeToString(), [],
                                     waiter, timeout=5.0)
                await waiter
            async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
                caller = MeshStepCaller(m)
                dest = await caller.destination(SVC, {SVC + "/x"})  # failed on x before
                try:
                    outcome: Any = await caller.request(dest, "run", {}, "run/step", 0.5,
                                                        lambda *_: None)
                except Exception as exc:  # noqa: BLE001 - its error is the outcome here
                    outcome = exc
                return dest, outcome
        finally:
            for m in agents:
                await m.close()

    dest, outcome = asyncio.run(main())
    assert dest == SVC + "/z"
    assert not isinstance(outcome, Overloaded)
