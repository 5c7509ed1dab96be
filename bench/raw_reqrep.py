"""Raw pyzmq request-response and fire-and-forget: broker, worker and clients, each in its own
process, written as fast as pyzmq allows (poll, then drain every ready message with
NOBLOCK; no per-message logging).

Wire of the broker (the shape of agp-mesh's router, minus its envelope): client DEALER
``[service, payload]`` -> broker ROUTER -> worker DEALER ``[client, payload]``; a worker
registers with ``[b"", service]`` and is answered ``[b"", b"OK"]``.
"""

from __future__ import annotations

import itertools
import select
import time
from collections.abc import Iterator
from typing import Any

import zmq

from bench.latency import OpenLoop, Recorder
from bench.procs import Child, Control, Group
from bench.raw_common import (
    DRAIN_MAX,
    MARGIN_S,
    SEND_TIMEOUT_MS,
    SERVICE,
    START_S,
    Keys,
    bind_loopback,
    close_context,
    curve_client,
    curve_server,
    keys_for,
    make_context,
    started_dealer,
    tight_timer_slack,
)


# --------------------------------------------------------------------------- broker sides
def _broker(ctl: Control, keys: Keys | None) -> dict[str, int]:
    """ROUTER-ROUTER broker: poll, then drain each ready socket without blocking."""
    ctx, auth = make_context(keys, zap=True)
    try:
        front = curve_server(ctx.socket(zmq.ROUTER), keys)
        back = curve_server(ctx.socket(zmq.ROUTER), keys)
        for s in (front, back):
            s.router_mandatory = True  # back-pressure instead of ROUTER's silent drop
            s.sndtimeo = SEND_TIMEOUT_MS
        ctl.ready((bind_loopback(front), bind_loopback(back)))
        rings: dict[bytes, Iterator[bytes]] = {}
        members: dict[bytes, list[bytes]] = {}
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        f_recv, b_recv, f_send, b_send = (
            front.recv_multipart,
            back.recv_multipart,
            front.send_multipart,
            back.send_multipart,
        )
        nb = zmq.NOBLOCK
        routed = unroutable = dropped = 0
        while not ctl.should_stop():
            for sock, _ in poller.poll(100):
                if sock is front:
                    for _ in range(DRAIN_MAX):
                        try:
                            cid, svc, *payload = f_recv(nb)
                        except zmq.Again:
                            break
                        ring = rings.get(svc)
                        if ring is None:
                            unroutable += 1
                            continue
                        try:
                            b_send([next(ring), cid, *payload])
                            routed += 1
                        except zmq.ZMQError:
                            dropped += 1
                else:
                    for _ in range(DRAIN_MAX):
                        try:
                            frames = b_recv(nb)
                        except zmq.Again:
                            break
                        if frames[1] == b"":  # READY [wid, b"", service]
                            wid, svc = frames[0], frames[2]
                            members.setdefault(svc, []).append(wid)
                            rings[svc] = itertools.cycle(list(members[svc]))
                            b_send([wid, b"", b"OK"])
                            continue
                        try:
                            f_send(frames[1:])
                        except zmq.ZMQError:
                            dropped += 1
        return {"routed": routed, "unroutable": unroutable, "dropped": dropped}
    finally:
        close_context(ctx, auth)


def _worker(ctl: Control, backend: str, keys: Keys | None, reply: bool) -> dict[str, Any]:
    """Echo worker (``reply``) or sink (fire-and-forget, ends on an ``END`` payload).

    A sink still answers ``warm`` so a one-way client can know the whole path is up.
    """
    ctx, auth = make_context(keys, zap=False)
    try:
        sock = curve_client(ctx.socket(zmq.DEALER), keys)
        sock.sndtimeo = SEND_TIMEOUT_MS
        sock.connect(backend)
        sock.send_multipart([b"", SERVICE])
        if not sock.poll(int(START_S * 1000)):
            raise TimeoutError("broker never acknowledged READY")
        sock.recv_multipart()
        ctl.ready()
        recv, send, nb, clock = (
            sock.recv_multipart,
            sock.send_multipart,
            zmq.NOBLOCK,
            time.perf_counter_ns,
        )
        n = 0
        first = last = 0
        ended = False
        while not ended and not ctl.should_stop():
            if not sock.poll(100):
                continue
            for _ in range(DRAIN_MAX):
                try:
                    frames = recv(nb)
                except zmq.Again:
                    break
                if reply:
                    send(frames)
                elif frames[-1] == b"END":
                    ended = True
                    break
                elif frames[-1] == b"warm":  # the client's warm-up: answer, don't count
                    send(frames)
                    continue
                n += 1
                last = clock()
                if first == 0:
                    first = last
        return {"received": n, "first_ns": first, "last_ns": last, "ended": ended}
    finally:
        close_context(ctx, auth)


def _client_sequential(
    ctl: Control, endpoint: str, keys: Keys | None, count: int, size: int
) -> dict[str, float]:
    """One request at a time; latency = reply time - send time."""
    with started_dealer(ctl, endpoint, keys, linger=0) as sock:
        rec = Recorder(count)
        msg = [SERVICE, bytes(size)]
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(count):
            t = clock()
            sock.send_multipart(msg)
            if not sock.poll(int(MARGIN_S * 1000)) or ctl.should_stop():
                break
            sock.recv_multipart()
            rec.record(clock() - t)
        out = rec.summary()
        out["req_per_s"] = rec.count / ((clock() - start) / 1e9)
        return out


def _client_inflight(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, inflight: int, size: int
) -> dict[str, float]:
    """Keep ``inflight`` requests outstanding for ``duration``; count replies per second."""
    with started_dealer(ctl, endpoint, keys, linger=0) as sock:
        rec = Recorder(min(10_000_000, int(duration * 300_000) + inflight))
        pad = bytes(max(0, size - 8))
        clock, recv, send, nb = (
            time.perf_counter_ns,
            sock.recv_multipart,
            sock.send_multipart,
            zmq.NOBLOCK,
        )
        start = clock()
        end = start + int(duration * 1e9)
        for _ in range(inflight):
            send([SERVICE, start.to_bytes(8, "little") + pad])
        done = 0
        now = start
        while now < end and not ctl.should_stop():
            if sock.poll(100):
                for _ in range(DRAIN_MAX):
                    try:
                        frames = recv(nb)
                    except zmq.Again:
                        break
                    now = clock()
                    rec.record(now - int.from_bytes(frames[0][:8], "little"))
                    done += 1
                    send([SERVICE, now.to_bytes(8, "little") + pad])
            now = clock()
        out = rec.summary()
        out["req_per_s"] = done / ((now - start) / 1e9)
        out["inflight"] = float(inflight)
        return out


def _client_open_loop(
    ctl: Control, endpoint: str, keys: Keys | None, rate: float, count: int
) -> dict[str, Any]:
    """Send request i at t0 + i/rate whatever the replies do; latency from intended time.

    Waits with select() on the socket's FD so sub-millisecond gaps neither busy-spin (which
    would steal a core from the broker on a 2-core box) nor round up to zmq.poll's 1 ms.
    """
    with started_dealer(ctl, endpoint, keys, linger=0) as sock:
        tight_timer_slack()
        clock, recv, send = time.perf_counter_ns, sock.recv_multipart, sock.send_multipart
        fd = sock.getsockopt(zmq.FD)
        events, pollin, nb = sock.getsockopt, zmq.POLLIN, zmq.NOBLOCK
        loop = OpenLoop(rate, count, clock() + 1_000_000)
        hard_end = loop.intended_ns(count - 1) + int(MARGIN_S * 1e9 / 3)
        nxt = got = 0
        now = clock()
        while got < count and now < hard_end and not ctl.should_stop():
            due = loop.due(now)
            while nxt < due:
                send([SERVICE, nxt.to_bytes(8, "little")])
                loop.sent(nxt, clock())
                nxt += 1
            while events(zmq.EVENTS) & pollin:
                frames = recv(nb)
                if loop.replied(int.from_bytes(frames[0][:8], "little"), clock()):
                    got += 1
            now = clock()
            wait_ns = loop.intended_ns(nxt) - now if nxt < count else 50_000_000
            if wait_ns > 0:
                select.select([fd], [], [], min(wait_ns, hard_end - now) / 1e9)
            now = clock()
        out: dict[str, Any] = {
            "corrected": loop.corrected(end_ns=now),
            "naive": loop.naive(),
            "send_lag": loop.send_lag(),
            "offered_per_s": rate,
            "answered": got,
            "lost": count - got,
        }
        return out


def _client_faf(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, size: int
) -> dict[str, float]:
    """Send as fast as the pipes take for ``duration``, then an END marker."""
    with started_dealer(ctl, endpoint, keys, linger=SEND_TIMEOUT_MS) as sock:
        msg = [SERVICE, bytes(size)]
        send, clock = sock.send_multipart, time.perf_counter_ns
        start = clock()
        end = start + int(duration * 1e9)
        sent = 0
        try:
            while clock() < end and not ctl.should_stop():
                for _ in range(500):
                    send(msg)
                sent += 500
        except zmq.Again:
            pass
        elapsed = (clock() - start) / 1e9
        sock.send_multipart([SERVICE, b"END"])
        return {"sent": float(sent), "sent_per_s": sent / elapsed}


# --------------------------------------------------------------------------- scenarios
def _echo_client(
    g: Group, keys: Keys | None, run: float, client: Any, *args: Any, reply: bool = True
) -> tuple[Child, Child]:
    """Broker, one worker and a client; the client starts once the worker is registered."""
    broker = g.spawn("broker", _broker, keys, max_run=run)
    front, back = broker.wait_ready()
    worker = g.spawn("worker", _worker, back, keys, reply, max_run=run)
    c = g.spawn("client", client, front, keys, *args, max_run=run)
    worker.wait_ready()
    c.wait_ready()
    c.send("go")
    return c, worker


def _echo_run(secure: bool, run: float, client: Any, *args: Any) -> dict[str, Any]:
    """Broker, echo worker and ``client(*args)`` for at most ``run`` s: the client's result."""
    with Group() as g:
        c, _ = _echo_client(g, keys_for(secure), run, client, *args)
        out: dict[str, Any] = c.result(run)
    out["secure"] = secure
    return out


def reqrep_sequential(*, count: int = 5000, size: int = 64, secure: bool = False) -> dict[str, Any]:
    """One request at a time through the broker: latency percentiles (ms) and req/s."""
    run = count / 500 + START_S + MARGIN_S  # even at 2 ms a request, the run ends
    return _echo_run(secure, run, _client_sequential, count, size)


def reqrep_inflight(
    *, duration: float = 2.0, inflight: int = 100, size: int = 64, secure: bool = False
) -> dict[str, Any]:
    """``inflight`` requests outstanding for ``duration``: req/s and closed-loop latency."""
    return _echo_run(secure, duration + START_S + MARGIN_S, _client_inflight, duration,
                     inflight, size)


def reqrep_open_loop(
    *, rate: float = 5000.0, duration: float = 2.0, secure: bool = False
) -> dict[str, Any]:
    """Offered ``rate`` req/s for ``duration``; latency corrected for coordinated omission."""
    return _echo_run(secure, duration + START_S + MARGIN_S, _client_open_loop, rate,
                     max(1, int(rate * duration)))


def fire_and_forget(
    *, duration: float = 2.0, size: int = 64, secure: bool = False
) -> dict[str, Any]:
    """DEALER -> broker -> worker, no replies: messages per second the worker receives."""
    run = duration + START_S + MARGIN_S
    with Group() as g:
        c, worker = _echo_client(g, keys_for(secure), run, _client_faf, duration, size, reply=False)
        sent = c.result(run)
        got = worker.result(MARGIN_S)
    secs = (got["last_ns"] - got["first_ns"]) / 1e9
    return {
        "sent": sent["sent"],
        "sent_per_s": sent["sent_per_s"],
        "delivered": float(got["received"]),
        "delivered_per_s": got["received"] / secs if secs > 0 else 0.0,
        "lost": sent["sent"] - got["received"],
        "secure": secure,
    }
