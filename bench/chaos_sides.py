"""The traffic sides of ``bench.chaos``, each run as its own process.

``python -m bench.chaos_sides requester|publisher|subscriber --endpoint ... --out DIR --name N``

Every side prints one JSON ``ready`` line once connected, writes ``DIR/N.progress.json``
about twice a second (the stall detector reads it), and at the end writes its accounting to
``DIR/N.json`` plus its arrays to ``DIR/N.npz``:

- requester: paced open-loop ``echo`` requests whose payload carries a sequence number;
  per request the send time, end time and outcome (1 ok, 2 explicit error, 0 never ended),
  and a bitset of the sequence numbers answered (a second answer is a duplicate).
- publisher: paced publishes of ``{"seq": i, "pad": ...}``; per message its publish time.
- subscriber: a bitset of the sequence numbers delivered (a second one is a duplicate), and
  where each counted drop was learnt (router sequence gaps, its own queue overflow, and
  ``lost``: numbers its publisher skipped that no router counted, e.g. a killed router's).

Every loop is bounded in time; SIGTERM ends a subscriber (it then writes its results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SERVICE = "chaos/mesh/echo"
TOPIC = "chaos.ticks"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _ready(**info: Any) -> None:
    print(json.dumps({"event": "ready", "pid": os.getpid(), **info}), flush=True)


async def _connect(a: argparse.Namespace, **kw: Any) -> Any:
    from mesh.aio import AsyncMesh

    return await AsyncMesh.connect(a.endpoint, identity=a.identity, breakers=False,
                                   timeout=30, **kw)


async def _progress_task(path: Path, snap: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        _write_json(path, {"t": time.monotonic(), **snap()})
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    _write_json(path, {"t": time.monotonic(), **snap()})


async def _pace(rate: float, count: int, t0: float, deadline: float, emit: Any) -> int:
    """Call ``emit(i)`` for every i whose time ``t0 + i / rate`` has come; open loop."""
    nxt = 0
    while nxt < count and time.monotonic() < deadline:
        now = time.monotonic()
        due = min(count, int((now - t0) * rate) + 1)
        burst = 0
        while nxt < due and burst < 2000:  # bounded burst, then give the loop a turn
            emit(nxt)
            nxt += 1
            burst += 1
        if nxt < due:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(max(0.001, t0 + nxt / rate - time.monotonic()))
    return nxt


# --------------------------------------------------------------------------- requester
async def requester(a: argparse.Namespace) -> dict[str, Any]:
    from mesh.errors import Error

    m = await _connect(a)
    count = max(1, int(a.rate * a.duration))
    send_t = np.full(count, np.nan)
    end_t = np.full(count, np.nan)
    outcome = np.zeros(count, dtype=np.int8)
    answered = np.zeros(count, dtype=bool)
    errors: Counter[str] = Counter()
    st = {"sent": 0, "ok": 0, "errors": 0, "duplicates": 0}
    pad = b"r" * a.payload
    for _ in range(20):  # warm the path (token, session, route)
        await m.request(SERVICE, "echo", {"seq": -1}, timeout=10)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            r = await m.request(SERVICE, "echo", {"seq": i, "pad": pad}, timeout=a.timeout,
                                idempotent=a.idempotent, retries=3 if a.idempotent else 0)
        except Error as exc:
            outcome[i] = 2
            errors[type(exc).__name__] += 1
            st["errors"] += 1
        except Exception as exc:  # noqa: BLE001 - counted, never lost
            outcome[i] = 2
            errors["other:" + type(exc).__name__] += 1
            st["errors"] += 1
        else:
            k = r.get("seq") if isinstance(r, dict) else None
            if k != i:
                outcome[i] = 2
                errors["wrong_reply"] += 1
                st["errors"] += 1
                if isinstance(k, int) and 0 <= k < count and answered[k]:
                    st["duplicates"] += 1
            elif answered[i]:
                st["duplicates"] += 1
            else:
                answered[i] = True
                outcome[i] = 1
                st["ok"] += 1
        end_t[i] = time.monotonic()

    def emit(i: int) -> None:
        send_t[i] = time.monotonic()
        st["sent"] += 1
        t = loop.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)

    stop = asyncio.Event()
    prog = loop.create_task(_progress_task(Path(a.out) / f"{a.name}.progress.json",
                                           lambda: dict(st), stop))
    _ready(count=count)
    t0 = time.monotonic()
    sent = await _pace(a.rate, count, t0, t0 + a.duration + 5, emit)
    t_done = time.monotonic()
    if pending:
        await asyncio.wait(set(pending), timeout=a.timeout + 10)
    vanished = len(pending)
    for t in list(pending):
        t.cancel()
    stop.set()
    await prog
    counters = dict(m.core.counters)
    await m.close()
    np.savez(Path(a.out) / f"{a.name}.npz", send_t=send_t[:sent], end_t=end_t[:sent],
             outcome=outcome[:sent])
    return {"side": "requester", "t0": t0, "t_done": t_done, "planned": count, "sent": sent,
            "ok": st["ok"], "errors": st["errors"], "error_types": dict(errors),
            "vanished": vanished, "duplicates": st["duplicates"],
            "answered_bits": int(answered.sum()), "client_counters": counters,
            "rate": a.rate, "achieved_rate": sent / max(1e-9, t_done - t0)}


# --------------------------------------------------------------------------- publisher
async def publisher(a: argparse.Namespace) -> dict[str, Any]:
    m = await _connect(a)
    count = max(1, int(a.rate * a.duration))
    pub_t = np.full(count, np.nan)
    pad = b"p" * a.payload
    st = {"published": 0, "max_publish_call_s": 0.0}
    loop = asyncio.get_running_loop()

    def emit(i: int) -> None:
        t = time.monotonic()
        m.publish(TOPIC, {"seq": i, "pad": pad})
        dt = time.monotonic() - t
        pub_t[i] = t
        st["published"] += 1
        if dt > st["max_publish_call_s"]:
            st["max_publish_call_s"] = dt

    stop = asyncio.Event()
    prog = loop.create_task(_progress_task(Path(a.out) / f"{a.name}.progress.json",
                                           lambda: dict(st), stop))
    _ready(count=count)
    t0 = time.monotonic()
    sent = await _pace(a.rate, count, t0, t0 + a.duration + 5, emit)
    t_done = time.monotonic()
    await m.flush()
    stop.set()
    await prog
    counters = dict(m.core.counters)
    t_close = time.monotonic()
    await m.close()
    close_s = time.monotonic() - t_close
    np.savez(Path(a.out) / f"{a.name}.npz", pub_t=pub_t[:sent])
    return {"side": "publisher", "t0": t0, "t_done": t_done, "planned": count,
            "published": sent, "publish_dropped": int(counters.get("publish_dropped", 0)),
            "max_publish_call_s": st["max_publish_call_s"], "close_s": close_s,
            "client_counters": counters, "rate": a.rate,
            "achieved_rate": sent / max(1e-9, t_done - t0)}


# --------------------------------------------------------------------------- subscriber
def _resubscribe_after_restart(m: Any) -> None:
    """Shim until mesh/pubsub.py does it: after a session with a *restarted* router, send
    the subscriptions again. libzmq's SUB re-sends them on reconnect by itself, but that
    happens before the new router knows the session, so RBAC refuses them and nothing is
    ever delivered again. Re-sent after WELCOME, they are accepted (and SUBACKed)."""
    import zmq

    subs = m.core.subs
    if getattr(subs, "RESUBSCRIBES_ON_RESTART", False):
        return
    orig = subs.on_session

    def on_session(welcome: Any, restarted: bool) -> None:
        orig(welcome, restarted)
        if restarted and subs.sock is not None:
            for prefix in list(subs.subs):
                subs.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                subs.sock.setsockopt(zmq.SUBSCRIBE, prefix)

    subs.on_session = on_session


async def subscriber(a: argparse.Namespace) -> dict[str, Any]:
    m = await _connect(a, hwm=a.hwm, sub_queue=a.hwm)
    if not a.no_shim:
        _resubscribe_after_restart(m)
    capacity = max(1, int(a.expect))
    got = np.zeros(capacity, dtype=bool)
    st = {"received": 0, "duplicates": 0, "out_of_range": 0, "gaps": 0, "dropped": 0}
    marks: list[tuple[int, int]] = []  # (seq of first message after a counted drop, count)
    last = [0]
    holder: list[Any] = []

    def cb(msg: Any) -> None:
        sub = holder[0]
        counted = sub.gaps + sub.dropped + sub.lost
        s = msg.data.get("seq", -1) if isinstance(msg.data, dict) else -1
        if counted != last[0]:
            marks.append((s, counted - last[0]))
            last[0] = counted
        st["received"] += 1
        if not 0 <= s < capacity:
            st["out_of_range"] += 1
        elif got[s]:
            st["duplicates"] += 1
        else:
            got[s] = True

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    sub = await m.subscribe("chaos.", cb)
    holder.append(sub)

    def snap() -> dict[str, Any]:
        return {**st, "gaps": sub.gaps, "dropped": sub.dropped, "lost": sub.lost}

    stop = asyncio.Event()
    prog = loop.create_task(_progress_task(Path(a.out) / f"{a.name}.progress.json", snap,
                                           stop))
    _ready()
    try:
        await asyncio.wait_for(done.wait(), a.duration + 300)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await prog
    gaps, dropped, lost = sub.gaps, sub.dropped, sub.lost
    if gaps + dropped + lost != last[0]:  # counted after the last delivered message
        marks.append((capacity, gaps + dropped + lost - last[0]))
    counters = dict(m.core.counters)
    await m.close()
    np.savez(Path(a.out) / f"{a.name}.npz", got=got,
             marks=np.array(marks, dtype=np.int64).reshape(-1, 2))
    return {"side": "subscriber", **st, "gaps": gaps, "dropped": dropped, "lost": lost,
            "unique": int(got.sum()), "client_counters": counters}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.chaos_sides")
    p.add_argument("side", choices=["requester", "publisher", "subscriber"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--payload", type=int, default=16)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--idempotent", action="store_true",
                   help="requester: mark the echo calls idempotent, so the client (and the "
                        "router, when an instance dies) may retry them within their timeout")
    p.add_argument("--expect", type=int, default=1_000_000, help="subscriber: bitset size")
    p.add_argument("--hwm", type=int, default=100_000, help="subscriber: socket/queue bound")
    p.add_argument("--no-shim", action="store_true",
                   help="subscriber: do not re-send subscriptions after a router restart")
    a = p.parse_args(argv)
    side = {"requester": requester, "publisher": publisher, "subscriber": subscriber}[a.side]
    try:
        import uvloop

        result = uvloop.run(side(a))
    except ImportError:  # pragma: no cover
        result = asyncio.run(side(a))
    import resource

    result["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _write_json(Path(a.out) / f"{a.name}.json", result)
    print(json.dumps({"event": "result", "name": a.name}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
