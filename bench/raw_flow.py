"""Raw pyzmq pub/sub (publisher, the C ``zmq.proxy``, subscribers) and streams (source,
relay, sink), each side in its own process; zero-copy (``copy=False``) for big frames and
one reused payload buffer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from bench.procs import Control, Group
from bench.raw_common import (
    DRAIN_MAX,
    MALLOC_DEFAULT,
    MALLOC_TUNED,
    MARGIN_S,
    SEND_TIMEOUT_MS,
    START_S,
    Keys,
    MiB,
    bind_loopback,
    close_context,
    curve_client,
    curve_server,
    keys_for,
    make_context,
)


# --------------------------------------------------------------------------- pub/sub sides
def _proxy(ctl: Control, keys: Keys | None, hwm: int) -> dict[str, int]:
    """libzmq's C proxy (XSUB <- publishers, XPUB -> subscribers), stopped via a control socket."""
    ctx, auth = make_context(keys, zap=True)
    try:
        xsub = curve_server(ctx.socket(zmq.XSUB), keys)
        xpub = curve_server(ctx.socket(zmq.XPUB), keys)
        for s in (xsub, xpub):
            s.sndhwm = s.rcvhwm = hwm
        ctrl = ctx.socket(zmq.PAIR)
        ctrl.bind("inproc://bench-proxy-ctrl")
        stopper = ctx.socket(zmq.PAIR)
        stopper.connect("inproc://bench-proxy-ctrl")
        ctl.ready((bind_loopback(xsub), bind_loopback(xpub)))

        def watch() -> None:  # zmq.proxy blocks in C: a thread turns "stop" into TERMINATE
            ctl.wait_stop(ctl.remaining())
            stopper.send(b"TERMINATE")

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        zmq.proxy_steerable(xsub, xpub, None, ctrl)
        t.join(5)
        return {}
    finally:
        close_context(ctx, auth)


def _publisher(
    ctl: Control, xsub: str, keys: Keys | None, hwm: int, duration: float, size: int, max_count: int
) -> dict[str, float]:
    """Probe until the parent says every subscriber is joined, publish, then repeat END."""
    ctx, _ = make_context(keys, zap=False)
    try:
        pub = curve_client(ctx.socket(zmq.PUB), keys)
        pub.sndhwm = hwm
        pub.connect(xsub)
        ctl.ready()
        while ctl.receive(0.005) != "go":
            if ctl.should_stop():
                return {"published": 0.0, "published_per_s": 0.0}
            pub.send(b"P")
        pad = bytes(max(0, size - 9))
        send, clock = pub.send, time.perf_counter_ns
        seq = 0
        start = clock()
        end = start + int(duration * 1e9)
        while seq < max_count and clock() < end:
            for s in range(seq, min(seq + 1000, max_count)):
                send(b"D" + s.to_bytes(8, "little") + pad)
            seq = min(seq + 1000, max_count)
        elapsed = (clock() - start) / 1e9
        while not ctl.should_stop():  # END until the parent has every subscriber's result
            pub.send(b"E")
            ctl.receive(0.01)
        return {"published": float(seq), "published_per_s": seq / elapsed}
    finally:
        close_context(ctx, None)


def _subscriber(
    ctl: Control, xpub: str, keys: Keys | None, hwm: int, max_count: int
) -> dict[str, float]:
    """Count data messages by sequence number (a bitset: losses and duplicates both show)."""
    ctx, _ = make_context(keys, zap=False)
    try:
        sub = curve_client(ctx.socket(zmq.SUB), keys)
        sub.rcvhwm = hwm
        sub.subscribe(b"")
        sub.connect(xpub)
        ctl.ready()
        seen = bytearray(max_count)
        recv, nb, clock = sub.recv, zmq.NOBLOCK, time.perf_counter_ns
        received = dup = first = last = 0
        probed = ended = False
        while not ended and not ctl.should_stop():
            if not sub.poll(100):
                continue
            for _ in range(DRAIN_MAX):
                try:
                    m = recv(nb)
                except zmq.Again:
                    break
                kind = m[0]
                if kind == 0x44:  # b"D"
                    seq = int.from_bytes(m[1:9], "little")
                    if seen[seq]:
                        dup += 1
                    seen[seq] = 1
                    received += 1
                    last = clock()
                    if first == 0:
                        first = last
                elif kind == 0x45:  # b"E"
                    ended = True
                    break
                elif not probed:
                    probed = True
                    ctl.note("joined")
        return {
            "received": float(received),
            "unique": float(seen.count(1)),
            "duplicates": float(dup),
            "first_ns": float(first),
            "last_ns": float(last),
        }
    finally:
        close_context(ctx, None)


# --------------------------------------------------------------------------- stream sides
def _sink(ctl: Control, endpoint: str | None, keys: Keys | None, hwm: int) -> dict[str, float]:
    """PULL big frames zero-copy; bind (direct) or connect (behind a relay); END = empty."""
    ctx, auth = make_context(keys, zap=endpoint is None)
    try:
        pull = ctx.socket(zmq.PULL)
        pull.rcvhwm = hwm
        if endpoint is None:
            ctl.ready(bind_loopback(curve_server(pull, keys)))
        else:
            curve_client(pull, keys).connect(endpoint)
            ctl.ready()
        recv, clock = pull.recv, time.perf_counter_ns
        n = nbytes = first = last = 0
        while not ctl.should_stop():
            if not pull.poll(100):
                continue
            f = recv(copy=False)
            size = len(f)
            if size == 0:
                break
            last = clock()
            if first == 0:
                first = last
            else:  # the first frame opens the window; count what arrives inside it
                n += 1
                nbytes += size
        secs = (last - first) / 1e9
        return {
            "frames": float(n),
            "bytes": float(nbytes),
            "gb_per_s": nbytes / secs / 1e9 if secs else 0.0,
        }
    finally:
        close_context(ctx, auth)


def _source(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, frame: int, hwm: int
) -> dict[str, float]:
    """PUSH one reused buffer zero-copy for ``duration`` after the parent's go, then END."""
    ctx, _ = make_context(keys, zap=False)
    try:
        push = curve_client(ctx.socket(zmq.PUSH), keys)
        push.sndhwm = hwm
        push.sndtimeo = SEND_TIMEOUT_MS
        push.connect(endpoint)
        ctl.ready()
        if ctl.receive(START_S) != "go":
            return {"sent": 0.0}
        buf = bytes(frame)
        send, clock = push.send, time.perf_counter_ns
        end = clock() + int(duration * 1e9)
        sent = 0
        try:
            while clock() < end and not ctl.should_stop():
                send(buf, copy=False)
                sent += 1
            push.send(b"")
        except zmq.Again:
            pass
        return {"sent": float(sent)}
    finally:
        close_context(ctx, None, linger=SEND_TIMEOUT_MS)


def _relay(ctl: Control, keys: Keys | None, hwm: int) -> dict[str, float]:
    """PULL -> PUSH in Python, forwarding the received Frame without copying its bytes."""
    ctx, auth = make_context(keys, zap=True)
    try:
        pull = curve_server(ctx.socket(zmq.PULL), keys)
        push = curve_server(ctx.socket(zmq.PUSH), keys)
        pull.rcvhwm = push.sndhwm = hwm
        push.sndtimeo = SEND_TIMEOUT_MS
        ctl.ready((bind_loopback(pull), bind_loopback(push)))
        recv, send, nb = pull.recv, push.send, zmq.NOBLOCK
        n = dropped = 0
        ended = False
        while not ended and not ctl.should_stop():
            if not pull.poll(100):
                continue
            for _ in range(DRAIN_MAX):
                try:
                    f = recv(nb, copy=False)
                except zmq.Again:
                    break
                try:
                    send(f, copy=False)
                except zmq.Again:
                    dropped += 1
                    continue
                n += 1
                if len(f) == 0:
                    ended = True
                    break
        return {"forwarded": float(n), "dropped": float(dropped)}
    finally:
        close_context(ctx, auth, linger=SEND_TIMEOUT_MS)


# --------------------------------------------------------------------------- scenarios
def pubsub(
    *,
    subscribers: int = 1,
    duration: float = 2.0,
    size: int = 64,
    hwm: int = 100_000,
    secure: bool = False,
) -> dict[str, Any]:
    """One publisher -> zmq.proxy (C) -> ``subscribers``: delivered msg/s and drops."""
    keys = keys_for(secure)
    max_count = int(duration * 2_000_000) + 1000
    run = duration + START_S + MARGIN_S
    with Group() as g:
        proxy = g.spawn("proxy", _proxy, keys, hwm, max_run=run + MARGIN_S)
        xsub, xpub = proxy.wait_ready()
        subs = [
            g.spawn(f"sub{i}", _subscriber, xpub, keys, hwm, max_count, max_run=run)
            for i in range(subscribers)
        ]
        pub = g.spawn("pub", _publisher, xsub, keys, hwm, duration, size, max_count, max_run=run)
        pub.wait_ready()
        for s in subs:
            s.wait_ready()
        for s in subs:  # every subscription has reached the publisher through the proxy
            s.expect("note", START_S)
        pub.send("go")
        got = [s.result(run) for s in subs]
        pub.request_stop()
        sent = pub.result(MARGIN_S)
    published = sent["published"]
    unique = [r["unique"] for r in got]
    span = (max(r["last_ns"] for r in got) - min(r["first_ns"] for r in got)) / 1e9
    per_sub = [
        r["received"] / ((r["last_ns"] - r["first_ns"]) / 1e9)
        if r["last_ns"] > r["first_ns"]
        else 0.0
        for r in got
    ]
    drops = sum(published - u for u in unique)
    return {
        "subscribers": subscribers,
        "published": published,
        "published_per_s": sent["published_per_s"],
        "delivered": float(sum(unique)),
        "delivered_per_s": sum(unique) / span if span > 0 else 0.0,
        "per_subscriber_per_s": per_sub,
        "drops": drops,
        "drop_pct": 100.0 * drops / (published * subscribers) if published else 0.0,
        "duplicates": float(sum(r["duplicates"] for r in got)),
        "secure": secure,
    }


def stream(
    *,
    relay: bool = False,
    duration: float = 2.0,
    frame: int = MiB,
    hwm: int = 16,
    malloc_tuned: bool = True,
    secure: bool = False,
) -> dict[str, Any]:
    """1 MiB frames PUSH -> PULL, direct or through a Python relay process: GB/s (1e9 B/s)."""
    keys = keys_for(secure)
    env = MALLOC_TUNED if malloc_tuned else MALLOC_DEFAULT
    run = duration + START_S + MARGIN_S
    with Group() as g:
        if relay:
            r = g.spawn("relay", _relay, keys, hwm, env=env, max_run=run)
            rin, rout = r.wait_ready()
            sink = g.spawn("sink", _sink, rout, keys, hwm, env=env, max_run=run)
            src = g.spawn("source", _source, rin, keys, duration, frame, hwm, env=env, max_run=run)
            sink.wait_ready()
        else:
            sink = g.spawn("sink", _sink, None, keys, hwm, env=env, max_run=run)
            ep = sink.wait_ready()
            src = g.spawn("source", _source, ep, keys, duration, frame, hwm, env=env, max_run=run)
        src.wait_ready()
        src.send("go")
        got = sink.result(run)
        sent = src.result(MARGIN_S)
    got.update(
        sent=sent["sent"], frame=frame, relay=relay, malloc_tuned=malloc_tuned, secure=secure
    )
    return got
