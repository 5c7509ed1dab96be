"""The agp-mesh side of `make bench`: the same scenarios as ``bench.baselines``, through the
real router and an echo agent, each side in its own process.

A message is one ``request``/``send``/``publish`` call by user code, delivered to user code
(a handler, a callback); batching under the hood is the client's business and is not
counted. Row names match ``bench.baselines`` so each figure sits beside its raw limit. The
mesh under test (router, agents, identities) is ``bench.mesh_system``'s.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from bench.latency import OpenLoop, Recorder, summarize
from bench.mesh_system import (
    MARGIN_S,
    SERVICE,
    START_S,
    Mode,
    connect,
    secure_env,
    start_mesh,
    uv_run,
)
from bench.procs import Control, Group

MiB = 1024 * 1024


def _client_sequential(ctl: Control, endpoint: str, count: int, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        payload = b"x" * size
        for _ in range(200):
            await m.request(SERVICE, "echo", payload, raw=True)
        ctl.ready()
        rec = Recorder(count)
        t0 = time.perf_counter_ns()
        for _ in range(count):
            t = time.perf_counter_ns()
            await m.request(SERVICE, "echo", payload, raw=True)
            rec.record(time.perf_counter_ns() - t)
        dt = (time.perf_counter_ns() - t0) / 1e9
        await m.close()
        return {**rec.summary(), "req_per_s": count / dt}

    return uv_run(main())


def _client_inflight(ctl: Control, endpoint: str, duration: float, inflight: int,
                     size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        payload = b"x" * size
        for _ in range(500):
            await m.request(SERVICE, "echo", payload, raw=True)
        ctl.ready()
        rec = Recorder(int(duration * 200_000) + 1000)
        stop_at = time.perf_counter() + duration
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                t = time.perf_counter_ns()
                await m.request(SERVICE, "echo", payload, raw=True)
                rec.record(time.perf_counter_ns() - t)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        dt = time.perf_counter() - t0
        await m.close()
        return {**rec.summary(), "req_per_s": done / dt}

    return uv_run(main())


def _client_open_loop(ctl: Control, endpoint: str, rate: float, count: int) -> dict[str, Any]:
    """Request i at t0 + i/rate whatever the replies do; latency from the intended time.

    The loop's own timers tick in milliseconds, so a :class:`bench.pacer.Pacer` (a timerfd)
    wakes it at each intended time instead, as the raw baseline's client wakes on schedule:
    the lateness left is the mesh's. Requests go out with ``request_nowait`` and a callback,
    as the raw client's do from its loop: a Task per request would make the load generator
    take the CPU the mesh under test needs.
    """
    async def main() -> dict[str, Any]:
        from bench.pacer import Pacer

        m = await connect(endpoint)
        for _ in range(500):
            await m.request(SERVICE, "echo", b"x", raw=True)
        ctl.ready()
        loop = asyncio.get_running_loop()
        ol = OpenLoop(rate, count, time.perf_counter_ns() + 1_000_000)
        all_done = asyncio.Event()
        nxt = [0]
        open_ = [0]  # requests sent and not yet answered

        def send_due() -> None:
            """Send every request whose intended time has come (pacer ticks, replies)."""
            due = min(ol.due(time.perf_counter_ns()), count)
            while nxt[0] < due:
                j = nxt[0]
                nxt[0] += 1
                ol.sent(j, time.perf_counter_ns())
                open_[0] += 1
                m.request_nowait(SERVICE, "echo", b"x", raw=True, timeout=30
                                 ).add_done_callback(functools.partial(replied, j))

        def replied(i: int, fut: asyncio.Future[Any]) -> None:
            open_[0] -= 1
            if not fut.cancelled() and fut.exception() is None:
                ol.replied(i, time.perf_counter_ns())
            send_due()
            if nxt[0] >= count and not open_[0]:
                all_done.set()

        pacer = Pacer(loop, ol.intended_ns(0), int(1e9 / rate), send_due)
        try:
            await asyncio.wait_for(all_done.wait(), timeout=count / rate + 60)
        except asyncio.TimeoutError:
            pass  # what never came back is counted lost below
        finally:
            pacer.close()
        corrected = summarize(ol.corrected_ns())
        await m.close()
        return {"corrected": corrected, "lost": count - ol.answered, "send_lag": ol.send_lag()}

    return uv_run(main())


def _client_faf(ctl: Control, endpoint: str, duration: float, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        payload = b"x" * size
        ctl.ready()
        sent = 0
        stop_at = time.perf_counter() + duration
        while time.perf_counter() < stop_at:
            for _ in range(100):
                await m.send(SERVICE, "count", payload, raw=True)
            sent += 100
            await asyncio.sleep(0)
        # a request after the sends, on the same connection: arrives after them
        await m.request(SERVICE, "echo", b"", raw=True, timeout=30)
        await m.close()
        return {"sent": sent}

    return uv_run(main())


def _publisher(ctl: Control, endpoint: str, duration: float, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        payload = b"x" * size
        ctl.ready()
        ctl.receive(START_S)  # "go"
        published = 0
        stop_at = time.perf_counter() + duration
        publish = m.publish
        while time.perf_counter() < stop_at:
            for _ in range(500):
                publish("bench.topic", payload, raw=True)
            published += 500
            await asyncio.sleep(0)
        await m.flush(wait=True, timeout=60)  # every publish has reached the router
        dropped = m.core.counters.get("publish_dropped", 0)  # refused by a full queue: counted
        await m.core.close(linger=15.0)
        return {"published": published, "publisher_dropped": dropped}

    out = uv_run(main())
    import zmq

    # a process that exits does not honour its sockets' linger unless the context is
    # terminated: this is what lets every queued publish reach the router
    zmq.Context.instance().term()
    return out


def _subscriber(ctl: Control, endpoint: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        state = {"n": 0, "first": 0, "last": 0}

        def on_msg(msg: Any) -> None:
            now = time.perf_counter_ns()
            if not state["n"]:
                state["first"] = now
            state["last"] = now
            state["n"] += 1

        sub = await m.subscribe("bench.", on_msg, raw=True)
        ctl.ready()
        loop = asyncio.get_running_loop()
        # the parent says how many were published; drain until each is received or counted
        # lost, or until nothing has arrived for 2 s
        published = await loop.run_in_executor(None, ctl.receive, ctl.remaining())
        idle_since, seen = time.monotonic(), -1
        while published is not None and time.monotonic() - idle_since < 2.0:
            if state["n"] + sub.gaps + sub.dropped >= published or ctl.should_stop():
                break
            if state["n"] != seen:
                seen, idle_since = state["n"], time.monotonic()
            await asyncio.sleep(0.05)
        out = {"received": state["n"], "first_ns": state["first"], "last_ns": state["last"],
               "gaps": sub.gaps, "dropped": sub.dropped}
        await m.close()
        return out

    return uv_run(main())


def _streamer(ctl: Control, endpoint: str, duration: float, frame: int, direct: bool
              ) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await connect(endpoint)
        chunk = bytes(frame)
        ctl.ready()
        sent = 0
        t0 = time.perf_counter()
        async with m.stream(SERVICE, "ingest", direct=direct) as s:
            while time.perf_counter() - t0 < duration:
                await s.write(chunk, raw=True)
                sent += 1
        dt = time.perf_counter() - t0
        await m.close()
        return {"chunks": s.result["chunks"], "direct": s.result["direct"],
                "gb_per_s": sent * frame / dt / 1e9}

    return uv_run(main())


# --------------------------------------------------------------------------- scenarios
def reqrep_sequential(*, count: int = 5000, size: int = 64, secure: Mode = False
                      ) -> dict[str, Any]:
    run = count / 500 + START_S
    with Group() as g:
        ep, _ = start_mesh(g, run, secure)
        c = g.spawn("client", _client_sequential, ep, count, size, max_run=run,
                    env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def reqrep_inflight(*, duration: float = 2.0, inflight: int = 100, size: int = 64,
                    secure: Mode = False) -> dict[str, Any]:
    run = duration + START_S
    with Group() as g:
        ep, _ = start_mesh(g, run, secure)
        c = g.spawn("client", _client_inflight, ep, duration, inflight, size, max_run=run,
                    env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def reqrep_open_loop(*, rate: float = 5000.0, duration: float = 2.0, secure: Mode = False
                     ) -> dict[str, Any]:
    run = duration + START_S
    with Group() as g:
        ep, _ = start_mesh(g, run, secure)
        c = g.spawn("client", _client_open_loop, ep, rate, max(1, int(rate * duration)),
                    max_run=run, env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def fire_and_forget(*, duration: float = 2.0, size: int = 64, secure: Mode = False
                    ) -> dict[str, Any]:
    run = duration + START_S
    env = secure_env(secure)
    with Group() as g:
        endpoint, agent = start_mesh(g, run, secure)
        c = g.spawn("client", _client_faf, endpoint, duration, size, max_run=run, env=env)
        c.wait_ready()
        sent = c.result(run)["sent"]
        agent.request_stop()
        got = agent.result(MARGIN_S)
    secs = (got["last_ns"] - got["first_ns"]) / 1e9
    return {"sent": sent, "delivered": got["received"],
            "delivered_per_s": got["received"] / secs if secs > 0 else 0.0,
            "lost": sent - got["received"]}


def pubsub(*, subscribers: int = 1, duration: float = 2.0, size: int = 64,
           secure: Mode = False) -> dict[str, Any]:
    run = duration + START_S
    env = secure_env(secure)
    with Group() as g:
        endpoint, _ = start_mesh(g, run, secure, agent=False)
        subs = [g.spawn(f"sub{i}", _subscriber, endpoint, max_run=run + MARGIN_S, env=env)
                for i in range(subscribers)]
        for s in subs:
            s.wait_ready()  # subscribed and confirmed
        pub = g.spawn("pub", _publisher, endpoint, duration, size, max_run=run, env=env)
        pub.wait_ready()
        pub.send("go")
        sent = pub.result(run + 20)
        published = sent["published"]
        # the publisher flushed and closed: each subscriber drains, then reports
        for s in subs:
            s.send(published)
        deadline = time.monotonic() + 60
        got = [s.result(max(1.0, deadline - time.monotonic())) for s in subs]
    received = sum(r["received"] for r in got)
    span = (max(r["last_ns"] for r in got) - min(r["first_ns"] for r in got)) / 1e9
    counted = sum(r["gaps"] + r["dropped"] for r in got) + sent["publisher_dropped"] * subscribers
    lost = published * subscribers - received
    return {"subscribers": subscribers, "published": published, "delivered": received,
            "delivered_per_s": received / span if span > 0 else 0.0,
            "drops": lost, "drop_pct": 100.0 * lost / max(1, published * subscribers),
            "counted_drops": counted, "unaccounted": lost - counted}


def stream(*, duration: float = 2.0, frame: int = MiB, malloc_tuned: bool = True,
           secure: Mode = False, direct: bool = False) -> dict[str, Any]:
    """1 MiB chunks through the router (``direct=False``) or peer to peer."""
    from bench.raw_common import MALLOC_DEFAULT, MALLOC_TUNED

    env: dict[str, Any] = dict(MALLOC_TUNED if malloc_tuned else MALLOC_DEFAULT)
    run = duration + START_S
    with Group() as g:
        ep, _ = start_mesh(g, run, secure, env=env)
        c = g.spawn("client", _streamer, ep, duration, frame, direct, max_run=run,
                    env={**env, **secure_env(secure)})
        c.wait_ready()
        return dict(c.result(run))
