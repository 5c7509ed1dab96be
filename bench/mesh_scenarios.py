"""The agp-mesh side of `make bench`: the same scenarios as ``bench.baselines``, through the
real router and an echo agent, each side in its own process.

A message is one ``request``/``send``/``publish`` call by user code, delivered to user code
(a handler, a callback); batching under the hood is the client's business and is not
counted. Row names match ``bench.baselines`` so each figure sits beside its raw limit.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any, Literal, Union

from bench.latency import OpenLoop, Recorder, summarize
from bench.procs import Control, Group

_START = 30.0
# security of a run: False (off), True (CURVE + ZAP + token + RBAC), or "e2e" (all that, and
# clients seal payloads end to end)
Mode = Union[bool, Literal["e2e"]]
_MARGIN = 10.0
MiB = 1024 * 1024
SERVICE = "bench/mesh/echo"


def _uv_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# --------------------------------------------------------------------------- sides
def _router_side(ctl: Control, secure: Mode) -> dict[str, Any]:
    import logging

    from router.config import RouterConfig
    from router.server import Router

    # agents leaving at the end of each run are news to an operator, not to a bench's reader
    logging.getLogger("agp.router").setLevel(logging.ERROR)

    parts = None
    if secure:
        from security.server import secure_router

        parts = secure_router(auth_port=0)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0"),
               access=parts.access if parts else None,
               server_keypair=parts.server_keypair if parts else None)
    r.start()
    threading.Thread(target=lambda: (ctl.wait_stop(ctl.remaining()), r.stop()),
                     daemon=True).start()
    ctl.ready((r.endpoint, r.pub_endpoint))
    r.run()
    if parts is not None:
        parts.stop()
    return r.stats.as_dict()


def _agent_side(ctl: Control, endpoint: str, secure: Mode) -> dict[str, Any]:
    import os

    from agents.echo import Echo

    async def main() -> dict[str, Any]:
        security = None
        if secure:
            from security.home import client_security

            security = client_security(AGENT_ID)
        agent = BenchEcho(endpoint=endpoint, namespace="bench/mesh", capacity=1024,
                          security=security)
        await agent.start()
        if os.environ.get("AGP_E2E"):  # clients seal for the key the registry knows
            await _registered(agent)
        ctl.ready(agent.instance_name)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ctl.wait_stop, ctl.remaining())
        await agent._shutdown(drain_timeout=1.0)
        return {"received": agent.received, "first_ns": agent.first_ns,
                "last_ns": agent.last_ns}

    class BenchEcho(Echo):
        received = 0
        first_ns = 0
        last_ns = 0

        from agents.base import action

        @action(inline=True)
        def count(self, data: Any, ctx: Any) -> None:
            now = time.perf_counter_ns()
            if not self.received:
                self.first_ns = now
            self.last_ns = now
            self.received += 1

    return _uv_run(main())


async def _registered(agent: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not agent.registered and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the lease is the agent's own task: poll it, bounded
    if not agent.registered:
        raise RuntimeError(f"{agent.service} not registered within {timeout:g}s")


def _system_side(ctl: Control, endpoint: str) -> dict[str, Any]:
    """The registry (whose keys e2e clients seal for) and the topic key service."""
    async def main() -> dict[str, Any]:
        from discovery.service import Registry
        from security.home import client_security
        from security.key_service import TopicKeyService

        registry = Registry(endpoint=endpoint, security=client_security(REGISTRY_ID))
        await registry.start()
        keys = TopicKeyService(endpoint=endpoint, security=client_security(KEYS_ID))
        await keys.start()
        await _registered(keys)
        ctl.ready()
        await asyncio.get_running_loop().run_in_executor(None, ctl.wait_stop, ctl.remaining())
        await keys._shutdown(drain_timeout=1.0)
        await registry._shutdown(drain_timeout=1.0)
        return {}

    return _uv_run(main())


def _system(g: Group, run: float, secure: Mode, endpoint: str) -> None:
    """Start the system agents end-to-end clients need (only in "e2e" runs)."""
    if secure == "e2e":
        g.spawn("system", _system_side, endpoint, max_run=run + _MARGIN,
                env=secure_env(secure)).wait_ready()


async def _client(endpoint: str) -> Any:
    import os

    from mesh.aio import AsyncMesh

    # secure runs set AGP_IDENTITY (and AGP_HOME) in this side's environment
    return await AsyncMesh.connect(endpoint, breakers=False,
                                   identity=os.environ.get("AGP_IDENTITY") or None)


AGENT_ID = "bench-agent"
CLIENT_ID = "bench-client"
REGISTRY_ID = "bench-registry"
KEYS_ID = "bench-keys"
_HOME: dict[str, str] = {}


def secure_env(secure: Mode) -> dict[str, str | None]:
    """The environment of every side: a temporary AGP_HOME with the bench identities, and
    AGP_E2E when clients seal payloads end to end."""
    if not secure:
        return {"AGP_IDENTITY": None, "AGP_E2E": None}
    if not _HOME:
        import atexit
        import shutil
        import tempfile

        from security.home import enroll_identity, ensure_router, open_home

        root = tempfile.mkdtemp(prefix="agp-bench-home-")
        # this process made it, this process removes it (the sides it spawns end first)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        home = open_home(root)
        ensure_router(home)
        enroll_identity(home, AGENT_ID, roles=("agent",), namespace="bench/mesh")
        enroll_identity(home, CLIENT_ID, roles=("client",))
        enroll_identity(home, REGISTRY_ID, roles=("agent",), namespace="agp/system")
        enroll_identity(home, KEYS_ID, roles=("agent",), namespace="agp/system")
        _HOME["root"] = root
    return {"AGP_HOME": _HOME["root"], "AGP_IDENTITY": CLIENT_ID,
            "AGP_E2E": "1" if secure == "e2e" else None}


def _client_sequential(ctl: Control, endpoint: str, count: int, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
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

    return _uv_run(main())


def _client_inflight(ctl: Control, endpoint: str, duration: float, inflight: int,
                     size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
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

    return _uv_run(main())


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

        m = await _client(endpoint)
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

    return _uv_run(main())


def _client_faf(ctl: Control, endpoint: str, duration: float, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
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

    return _uv_run(main())


def _publisher(ctl: Control, endpoint: str, duration: float, size: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
        payload = b"x" * size
        ctl.ready()
        ctl.receive(_START)  # "go"
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

    out = _uv_run(main())
    import zmq

    # a process that exits does not honour its sockets' linger unless the context is
    # terminated: this is what lets every queued publish reach the router
    zmq.Context.instance().term()
    return out


def _subscriber(ctl: Control, endpoint: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
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

    return _uv_run(main())


def _streamer(ctl: Control, endpoint: str, duration: float, frame: int, direct: bool
              ) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        m = await _client(endpoint)
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

    return _uv_run(main())


# --------------------------------------------------------------------------- scenarios
def _mesh(g: Group, run: float, secure: Mode, env: dict[str, Any] | None = None) -> str:
    env = {**secure_env(secure), **(env or {})}
    router = g.spawn("router", _router_side, secure, max_run=run + _MARGIN, env=env)
    endpoint, _ = router.wait_ready()
    _system(g, run, secure, endpoint)
    agent = g.spawn("agent", _agent_side, endpoint, secure, max_run=run + _MARGIN, env=env)
    agent.wait_ready()
    return str(endpoint)


def reqrep_sequential(*, count: int = 5000, size: int = 64, secure: Mode = False
                      ) -> dict[str, Any]:
    run = count / 500 + _START
    with Group() as g:
        ep = _mesh(g, run, secure)
        c = g.spawn("client", _client_sequential, ep, count, size, max_run=run,
                    env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def reqrep_inflight(*, duration: float = 2.0, inflight: int = 100, size: int = 64,
                    secure: Mode = False) -> dict[str, Any]:
    run = duration + _START
    with Group() as g:
        ep = _mesh(g, run, secure)
        c = g.spawn("client", _client_inflight, ep, duration, inflight, size, max_run=run,
                    env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def reqrep_open_loop(*, rate: float = 5000.0, duration: float = 2.0, secure: Mode = False
                     ) -> dict[str, Any]:
    run = duration + _START
    with Group() as g:
        ep = _mesh(g, run, secure)
        c = g.spawn("client", _client_open_loop, ep, rate, max(1, int(rate * duration)),
                    max_run=run, env=secure_env(secure))
        c.wait_ready()
        return dict(c.result(run))


def fire_and_forget(*, duration: float = 2.0, size: int = 64, secure: Mode = False
                    ) -> dict[str, Any]:
    run = duration + _START
    env = secure_env(secure)
    with Group() as g:
        router = g.spawn("router", _router_side, secure, max_run=run + _MARGIN, env=env)
        endpoint, _ = router.wait_ready()
        _system(g, run, secure, endpoint)
        agent = g.spawn("agent", _agent_side, endpoint, secure, max_run=run + _MARGIN,
                        env=env)
        agent.wait_ready()
        c = g.spawn("client", _client_faf, endpoint, duration, size, max_run=run, env=env)
        c.wait_ready()
        sent = c.result(run)["sent"]
        agent.request_stop()
        got = agent.result(_MARGIN)
    secs = (got["last_ns"] - got["first_ns"]) / 1e9
    return {"sent": sent, "delivered": got["received"],
            "delivered_per_s": got["received"] / secs if secs > 0 else 0.0,
            "lost": sent - got["received"]}


def pubsub(*, subscribers: int = 1, duration: float = 2.0, size: int = 64,
           secure: Mode = False) -> dict[str, Any]:
    run = duration + _START
    env = secure_env(secure)
    with Group() as g:
        router = g.spawn("router", _router_side, secure, max_run=run + _MARGIN, env=env)
        endpoint, _ = router.wait_ready()
        _system(g, run, secure, endpoint)
        subs = [g.spawn(f"sub{i}", _subscriber, endpoint, max_run=run + _MARGIN, env=env)
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
    run = duration + _START
    with Group() as g:
        ep = _mesh(g, run, secure, env=env)
        c = g.spawn("client", _streamer, ep, duration, frame, direct, max_run=run,
                    env={**env, **secure_env(secure)})
        c.wait_ready()
        return dict(c.result(run))
