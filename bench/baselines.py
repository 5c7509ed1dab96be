"""Raw pyzmq baselines: every mesh pattern with no framework, the limit agp-mesh is held to.

Each side runs in its own process where the real thing would (client, broker, worker;
publisher, proxy, subscribers; source, relay, sink) and is written as fast as pyzmq allows:
poll, then drain every ready message with NOBLOCK; no per-message logging; zero-copy
(``copy=False``) for big frames; one reused payload buffer. Every scenario takes a
``duration`` or ``count`` so a test can run it tiny, and ``secure=True`` turns CURVE on with
a ZAP handler (``ThreadAuthenticator``) that allows only the client key, as the mesh runs.

Wire of the request-response broker (the shape of agp-mesh's router, minus its envelope):
client DEALER ``[service, payload]`` -> broker ROUTER -> worker DEALER ``[client, payload]``;
a worker registers with ``[b"", service]`` and is answered ``[b"", b"OK"]``.
"""

from __future__ import annotations

import ctypes
import itertools
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.auth.thread import ThreadAuthenticator

from bench.latency import OpenLoop, Recorder
from bench.procs import Child, Control, Group

SERVICE: Final = b"echo"
LOOPBACK: Final = "tcp://127.0.0.1:*"
MiB: Final = 1 << 20
#: Per-poll drain cap: bounds one round so the other socket is never starved.
DRAIN_MAX: Final = 1000
#: Sends that block longer than this (ms) mean a peer is gone: count, don't hang.
SEND_TIMEOUT_MS: Final = 1000
#: glibc settings that keep 1 MiB buffers on the heap instead of mmap/munmap per message.
MALLOC_TUNED: Final = {
    "MALLOC_MMAP_THRESHOLD_": str(8 * MiB),
    "MALLOC_TRIM_THRESHOLD_": str(64 * MiB),
}
MALLOC_DEFAULT: Final[dict[str, str | None]] = {k: None for k in MALLOC_TUNED}
_START: Final = 30.0  # seconds a scenario allows its sides to start
_MARGIN: Final = 15.0  # seconds past a scenario's duration before a side is declared stuck


# --------------------------------------------------------------------------- security
@dataclass(frozen=True)
class Keys:
    """One server and one client CURVE keypair (z85), made fresh per scenario."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def new(cls) -> Keys:
        sp, ss = zmq.curve_keypair()
        cp, cs = zmq.curve_keypair()
        return cls(sp, ss, cp, cs)


class _AllowKeys:
    """ZAP credentials provider: exactly the enrolled client keys, nothing else."""

    def __init__(self, allowed: set[bytes]) -> None:
        self.allowed = frozenset(allowed)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.allowed


def _context(
    keys: Keys | None, *, zap: bool
) -> tuple[zmq.Context[Any], ThreadAuthenticator | None]:
    """A context, with a ZAP handler started first when this side binds CURVE servers."""
    ctx: zmq.Context[Any] = zmq.Context()
    if keys is None or not zap:
        return ctx, None
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", _AllowKeys({keys.client_public}))
    return ctx, auth


def _close(ctx: zmq.Context[Any], auth: ThreadAuthenticator | None, linger: int = 0) -> None:
    """Close every socket; a side whose last message is an END marker keeps ``linger`` ms
    so the marker (and the frames queued before it) still leave."""
    if auth is not None:
        auth.stop()
    ctx.destroy(linger=linger)


def _server(sock: zmq.Socket[Any], keys: Keys | None) -> zmq.Socket[Any]:
    if keys is not None:
        sock.curve_server = True
        sock.curve_secretkey = keys.server_secret
        sock.curve_publickey = keys.server_public
    return sock


def _client(sock: zmq.Socket[Any], keys: Keys | None) -> zmq.Socket[Any]:
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.client_public
        sock.curve_secretkey = keys.client_secret
    return sock


def _bind(sock: zmq.Socket[Any]) -> str:
    sock.bind(LOOPBACK)
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


# --------------------------------------------------------------------------- broker sides
def _broker(ctl: Control, keys: Keys | None) -> dict[str, int]:
    """ROUTER-ROUTER broker: poll, then drain each ready socket without blocking."""
    ctx, auth = _context(keys, zap=True)
    try:
        front = _server(ctx.socket(zmq.ROUTER), keys)
        back = _server(ctx.socket(zmq.ROUTER), keys)
        for s in (front, back):
            s.router_mandatory = True  # back-pressure instead of ROUTER's silent drop
            s.sndtimeo = SEND_TIMEOUT_MS
        ctl.ready((_bind(front), _bind(back)))
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
        _close(ctx, auth)


def _worker(ctl: Control, backend: str, keys: Keys | None, reply: bool) -> dict[str, Any]:
    """Echo worker (``reply``) or sink (fire-and-forget, ends on an ``END`` payload).

    A sink still answers ``warm`` so a one-way client can know the whole path is up.
    """
    ctx, auth = _context(keys, zap=False)
    try:
        sock = _client(ctx.socket(zmq.DEALER), keys)
        sock.sndtimeo = SEND_TIMEOUT_MS
        sock.connect(backend)
        sock.send_multipart([b"", SERVICE])
        if not sock.poll(int(_START * 1000)):
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
        _close(ctx, auth)


def _dealer(ctx: zmq.Context[Any], endpoint: str, keys: Keys | None) -> zmq.Socket[Any]:
    sock = _client(ctx.socket(zmq.DEALER), keys)
    sock.sndtimeo = SEND_TIMEOUT_MS
    sock.connect(endpoint)
    return sock


def _go(ctl: Control) -> None:
    """Say ready, then wait for the parent's go (sent once every other side is up)."""
    ctl.ready()
    if ctl.receive(_START) != "go":
        raise TimeoutError("no go from the parent")


def _warm(sock: zmq.Socket[Any], n: int) -> None:
    """A few round trips so the CURVE handshake and TCP warm-up stay out of the samples."""
    for _ in range(n):
        sock.send_multipart([SERVICE, b"warm"])
        if not sock.poll(int(_START * 1000)):
            raise TimeoutError("no reply during warm-up")
        sock.recv_multipart()


def _client_sequential(
    ctl: Control, endpoint: str, keys: Keys | None, count: int, size: int
) -> dict[str, float]:
    """One request at a time; latency = reply time - send time."""
    ctx, _ = _context(keys, zap=False)
    try:
        sock = _dealer(ctx, endpoint, keys)
        _go(ctl)
        _warm(sock, 50)
        rec = Recorder(count)
        msg = [SERVICE, bytes(size)]
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(count):
            t = clock()
            sock.send_multipart(msg)
            if not sock.poll(int(_MARGIN * 1000)) or ctl.should_stop():
                break
            sock.recv_multipart()
            rec.record(clock() - t)
        out = rec.summary()
        out["req_per_s"] = rec.count / ((clock() - start) / 1e9)
        return out
    finally:
        _close(ctx, None)


def _client_inflight(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, inflight: int, size: int
) -> dict[str, float]:
    """Keep ``inflight`` requests outstanding for ``duration``; count replies per second."""
    ctx, _ = _context(keys, zap=False)
    try:
        sock = _dealer(ctx, endpoint, keys)
        _go(ctl)
        _warm(sock, 50)
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
    finally:
        _close(ctx, None)


def _client_open_loop(
    ctl: Control, endpoint: str, keys: Keys | None, rate: float, count: int
) -> dict[str, Any]:
    """Send request i at t0 + i/rate whatever the replies do; latency from intended time.

    Waits with select() on the socket's FD so sub-millisecond gaps neither busy-spin (which
    would steal a core from the broker on a 2-core box) nor round up to zmq.poll's 1 ms.
    """
    ctx, _ = _context(keys, zap=False)
    try:
        sock = _dealer(ctx, endpoint, keys)
        _go(ctl)
        _warm(sock, 50)
        _tight_timer_slack()
        clock, recv, send = time.perf_counter_ns, sock.recv_multipart, sock.send_multipart
        fd = sock.getsockopt(zmq.FD)
        events, pollin, nb = sock.getsockopt, zmq.POLLIN, zmq.NOBLOCK
        loop = OpenLoop(rate, count, clock() + 1_000_000)
        hard_end = loop.intended_ns(count - 1) + int(_MARGIN * 1e9 / 3)
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
    finally:
        _close(ctx, None)


def _tight_timer_slack() -> None:
    """Ask Linux for 1 us timer slack (default 50 us) so select() wakes on schedule.

    Without it the open-loop client itself sends ~60-90 us late, and that lag (rightly
    charged by the coordinated-omission correction) would be the client's, not the broker's.
    """
    try:
        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns
    except (OSError, AttributeError):
        pass


def _client_faf(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, size: int
) -> dict[str, float]:
    """Send as fast as the pipes take for ``duration``, then an END marker."""
    ctx, _ = _context(keys, zap=False)
    try:
        sock = _dealer(ctx, endpoint, keys)
        _go(ctl)
        _warm(sock, 50)
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
    finally:
        _close(ctx, None, linger=SEND_TIMEOUT_MS)


# --------------------------------------------------------------------------- pub/sub sides
def _proxy(ctl: Control, keys: Keys | None, hwm: int) -> dict[str, int]:
    """libzmq's C proxy (XSUB <- publishers, XPUB -> subscribers), stopped via a control socket."""
    ctx, auth = _context(keys, zap=True)
    try:
        xsub = _server(ctx.socket(zmq.XSUB), keys)
        xpub = _server(ctx.socket(zmq.XPUB), keys)
        for s in (xsub, xpub):
            s.sndhwm = s.rcvhwm = hwm
        ctrl = ctx.socket(zmq.PAIR)
        ctrl.bind("inproc://bench-proxy-ctrl")
        stopper = ctx.socket(zmq.PAIR)
        stopper.connect("inproc://bench-proxy-ctrl")
        ctl.ready((_bind(xsub), _bind(xpub)))

        def watch() -> None:  # zmq.proxy blocks in C: a thread turns "stop" into TERMINATE
            ctl.wait_stop(ctl.remaining())
            stopper.send(b"TERMINATE")

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        zmq.proxy_steerable(xsub, xpub, None, ctrl)
        t.join(5)
        return {}
    finally:
        _close(ctx, auth)


def _publisher(
    ctl: Control, xsub: str, keys: Keys | None, hwm: int, duration: float, size: int, max_count: int
) -> dict[str, float]:
    """Probe until the parent says every subscriber is joined, publish, then repeat END."""
    ctx, _ = _context(keys, zap=False)
    try:
        pub = _client(ctx.socket(zmq.PUB), keys)
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
        _close(ctx, None)


def _subscriber(
    ctl: Control, xpub: str, keys: Keys | None, hwm: int, max_count: int
) -> dict[str, float]:
    """Count data messages by sequence number (a bitset: losses and duplicates both show)."""
    ctx, _ = _context(keys, zap=False)
    try:
        sub = _client(ctx.socket(zmq.SUB), keys)
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
        _close(ctx, None)


# --------------------------------------------------------------------------- stream sides
def _sink(ctl: Control, endpoint: str | None, keys: Keys | None, hwm: int) -> dict[str, float]:
    """PULL big frames zero-copy; bind (direct) or connect (behind a relay); END = empty."""
    ctx, auth = _context(keys, zap=endpoint is None)
    try:
        pull = ctx.socket(zmq.PULL)
        pull.rcvhwm = hwm
        if endpoint is None:
            ctl.ready(_bind(_server(pull, keys)))
        else:
            _client(pull, keys).connect(endpoint)
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
        _close(ctx, auth)


def _source(
    ctl: Control, endpoint: str, keys: Keys | None, duration: float, frame: int, hwm: int
) -> dict[str, float]:
    """PUSH one reused buffer zero-copy for ``duration`` after the parent's go, then END."""
    ctx, _ = _context(keys, zap=False)
    try:
        push = _client(ctx.socket(zmq.PUSH), keys)
        push.sndhwm = hwm
        push.sndtimeo = SEND_TIMEOUT_MS
        push.connect(endpoint)
        ctl.ready()
        if ctl.receive(_START) != "go":
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
        _close(ctx, None, linger=SEND_TIMEOUT_MS)


def _relay(ctl: Control, keys: Keys | None, hwm: int) -> dict[str, float]:
    """PULL -> PUSH in Python, forwarding the received Frame without copying its bytes."""
    ctx, auth = _context(keys, zap=True)
    try:
        pull = _server(ctx.socket(zmq.PULL), keys)
        push = _server(ctx.socket(zmq.PUSH), keys)
        pull.rcvhwm = push.sndhwm = hwm
        push.sndtimeo = SEND_TIMEOUT_MS
        ctl.ready((_bind(pull), _bind(push)))
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
        _close(ctx, auth, linger=SEND_TIMEOUT_MS)


# --------------------------------------------------------------------------- scenarios
def _keys(secure: bool) -> Keys | None:
    return Keys.new() if secure else None


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


def reqrep_sequential(*, count: int = 5000, size: int = 64, secure: bool = False) -> dict[str, Any]:
    """One request at a time through the broker: latency percentiles (ms) and req/s."""
    run = count / 500 + _START + _MARGIN  # even at 2 ms a request, the run ends
    with Group() as g:
        c, _ = _echo_client(g, _keys(secure), run, _client_sequential, count, size)
        out: dict[str, Any] = c.result(run)
    out["secure"] = secure
    return out


def reqrep_inflight(
    *, duration: float = 2.0, inflight: int = 100, size: int = 64, secure: bool = False
) -> dict[str, Any]:
    """``inflight`` requests outstanding for ``duration``: req/s and closed-loop latency."""
    run = duration + _START + _MARGIN
    with Group() as g:
        c, _ = _echo_client(g, _keys(secure), run, _client_inflight, duration, inflight, size)
        out: dict[str, Any] = c.result(run)
    out["secure"] = secure
    return out


def reqrep_open_loop(
    *, rate: float = 5000.0, duration: float = 2.0, secure: bool = False
) -> dict[str, Any]:
    """Offered ``rate`` req/s for ``duration``; latency corrected for coordinated omission."""
    count = max(1, int(rate * duration))
    run = duration + _START + _MARGIN
    with Group() as g:
        c, _ = _echo_client(g, _keys(secure), run, _client_open_loop, rate, count)
        out: dict[str, Any] = c.result(run)
    out["secure"] = secure
    return out


def fire_and_forget(
    *, duration: float = 2.0, size: int = 64, secure: bool = False
) -> dict[str, Any]:
    """DEALER -> broker -> worker, no replies: messages per second the worker receives."""
    run = duration + _START + _MARGIN
    with Group() as g:
        c, worker = _echo_client(g, _keys(secure), run, _client_faf, duration, size, reply=False)
        sent = c.result(run)
        got = worker.result(_MARGIN)
    secs = (got["last_ns"] - got["first_ns"]) / 1e9
    return {
        "sent": sent["sent"],
        "sent_per_s": sent["sent_per_s"],
        "delivered": float(got["received"]),
        "delivered_per_s": got["received"] / secs if secs > 0 else 0.0,
        "lost": sent["sent"] - got["received"],
        "secure": secure,
    }


def pubsub(
    *,
    subscribers: int = 1,
    duration: float = 2.0,
    size: int = 64,
    hwm: int = 100_000,
    secure: bool = False,
) -> dict[str, Any]:
    """One publisher -> zmq.proxy (C) -> ``subscribers``: delivered msg/s and drops."""
    keys = _keys(secure)
    max_count = int(duration * 2_000_000) + 1000
    run = duration + _START + _MARGIN
    with Group() as g:
        proxy = g.spawn("proxy", _proxy, keys, hwm, max_run=run + _MARGIN)
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
            s.expect("note", _START)
        pub.send("go")
        got = [s.result(run) for s in subs]
        pub.request_stop()
        sent = pub.result(_MARGIN)
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
    keys = _keys(secure)
    env = MALLOC_TUNED if malloc_tuned else MALLOC_DEFAULT
    run = duration + _START + _MARGIN
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
        sent = src.result(_MARGIN)
    got.update(
        sent=sent["sent"], frame=frame, relay=relay, malloc_tuned=malloc_tuned, secure=secure
    )
    return got


# --------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class Profile:
    """How long each baseline runs: ``full`` for ``make bench``, ``quick``, ``tiny`` for tests."""

    count: int  # sequential requests
    duration: float  # seconds of every timed scenario
    rates: tuple[float, ...]  # open-loop offered rates, req/s
    subscribers: tuple[int, ...]
    inflight: int = 100
    malloc_variants: bool = True  # also measure streaming with glibc's default thresholds


PROFILES: Final = {
    "full": Profile(count=10_000, duration=3.0, rates=(5000.0, 10000.0), subscribers=(1, 10)),
    "quick": Profile(count=2000, duration=0.8, rates=(10000.0,), subscribers=(1, 10),
                     malloc_variants=False),
    "tiny": Profile(count=200, duration=0.2, rates=(2000.0,), subscribers=(2,), inflight=20),
}

RR, FAF, PS, ST = "request-response", "fire-and-forget", "pub/sub", "streaming"


def scenario_names(profile: str = "full") -> list[str]:
    """Names of the suite's steps, in run order (one per baseline run, per security mode)."""
    return [name for name, _, _ in _steps(PROFILES[profile])]


def _steps(p: Profile) -> list[tuple[str, Any, Any]]:
    """(name, run(secure) -> dict, emit(report, result, security)) for every baseline."""
    d = p.duration
    steps: list[tuple[str, Any, Any]] = [
        (
            "sequential",
            lambda s: reqrep_sequential(count=p.count, secure=s),
            lambda rep, r, sec: rep.add_latency(RR, "sequential", baseline=r, security=sec),
        ),
        (
            f"{p.inflight} in flight",
            lambda s: reqrep_inflight(duration=d, inflight=p.inflight, secure=s),
            lambda rep, r, sec: (
                rep.add_baseline(RR, f"{p.inflight} in flight", r["req_per_s"], "req/s", sec),
                rep.add_latency(RR, f"{p.inflight} in flight", baseline=r, security=sec),
            ),
        ),
    ]
    for rate in p.rates:
        steps.append(
            (
                f"open loop {rate:.0f}/s",
                lambda s, rate=rate: reqrep_open_loop(rate=rate, duration=d, secure=s),
                lambda rep, r, sec, rate=rate: rep.add_latency(
                    RR,
                    f"open loop {rate:.0f}/s",
                    baseline=r["corrected"],
                    security=sec,
                    note=f"lost {r['lost']}" if r["lost"] else "",
                ),  # fmt: skip
            )
        )
    steps.append(
        (
            "fire-and-forget",
            lambda s: fire_and_forget(duration=d, secure=s),
            lambda rep, r, sec: rep.add_baseline(
                FAF, "throughput", r["delivered_per_s"], "msg/s", sec
            ),
        )
    )
    for n in p.subscribers:
        label = f"{n} subscriber{'s' if n > 1 else ''}"
        steps.append(
            (
                f"pub/sub {label}",
                lambda s, n=n: pubsub(subscribers=n, duration=d, secure=s),
                lambda rep, r, sec, label=label: (
                    rep.add_baseline(PS, f"{label}, delivered", r["delivered_per_s"], "msg/s", sec),
                    rep.add_baseline(PS, f"{label}, dropped", r["drop_pct"], "%", sec),
                ),
            )
        )
    for relay in (False, True):
        for tuned in ((True, False) if p.malloc_variants else (True,)):
            name = f"{'relay' if relay else 'direct'} 1 MiB" + ("" if tuned else ", default malloc")
            steps.append(
                (
                    name,
                    lambda s, relay=relay, tuned=tuned: stream(
                        relay=relay, duration=d, malloc_tuned=tuned, secure=s
                    ),
                    lambda rep, r, sec, name=name: rep.add_baseline(
                        ST, name, r["gb_per_s"], "GB/s", sec
                    ),
                )
            )
    return steps


def run_suite(
    report: Any,
    *,
    profile: str = "full",
    security: tuple[str, ...] = ("off", "on"),
    progress: Any = None,
) -> dict[str, Any]:
    """Run every baseline and put its figures in ``report``'s baseline column.

    Rows (per security "off"/"on"), for the agp-mesh scenarios to fill with ``report.add``
    or ``report.add_latency`` under the same names: RR ``sequential`` (latency),
    ``100 in flight`` (req/s and latency), ``open loop 5000/s`` / ``10000/s`` (latency,
    corrected); FAF ``throughput`` (msg/s); PS ``1 subscriber, delivered`` /
    ``10 subscribers, delivered`` (msg/s) and ``..., dropped`` (%); ST ``direct 1 MiB``,
    ``relay 1 MiB`` and their ``, default malloc`` twins (GB/s).

    ``report`` is a :class:`bench.report.Report`; ``progress`` a callable taking a label
    (e.g. ``Progress.step``). A scenario that fails is noted in the report and the suite
    goes on. Returns ``{"<name> [security <s>]": result dict}``.
    """
    return run_steps(report, _steps(PROFILES[profile]), security=security,
                     label=report.baseline_label, progress=progress)


SECURITY_MODES: Final[dict[str, Any]] = {"off": False, "on": True, "e2e": "e2e"}


def step_modes(step: tuple[Any, ...], security: tuple[str, ...]) -> tuple[str, ...]:
    """The security modes a step runs in: all asked for, or those it names (4th item)."""
    return security if len(step) < 4 else tuple(s for s in security if s in step[3])


def run_steps(report: Any, steps: list[tuple[Any, ...]], *, security: tuple[str, ...],
              label: str, progress: Any = None) -> dict[str, Any]:
    """Run ``(name, run(secure) -> dict, emit(report, result, security)[, modes])`` steps,
    each in every security mode (off, on, e2e) side by side, or in the ``modes`` it names; a
    step that fails is noted and the rest go on."""
    results: dict[str, Any] = {}
    for step in steps:
        name, run, emit = step[:3]
        for sec in step_modes(step, security):
            key = f"{name} [security {sec}]"
            if progress is not None:
                progress(f"{label}: {key}")
            try:
                r = run(SECURITY_MODES[sec])
            except Exception as e:  # one broken scenario must not hide the others
                results[key] = {"error": f"{type(e).__name__}: {e}"}
                report.message(f"{label} {key} failed: {type(e).__name__}: {e}")
                continue
            results[key] = r
            report.add_raw(f"{label}/{key}", r)
            emit(report, r, sec)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.baselines [--quick] [--security off,on] [--out DIR]``: raw only."""
    import argparse

    from bench.report import RESULTS_DIR, Progress, Report

    ap = argparse.ArgumentParser(prog="bench.baselines", description="raw pyzmq baselines")
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--security", default="off,on", help="comma list of off/on")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="output directory")
    args = ap.parse_args(argv)
    profile = "quick" if args.quick else "full"
    security = tuple(s for s in args.security.split(",") if s in ("off", "on"))
    rep = Report(title="raw pyzmq baselines")
    prog = Progress(total=len(scenario_names(profile)) * len(security))
    run_suite(rep, profile=profile, security=security, progress=prog.step)
    prog.done()
    rep.write(args.out, stem="baselines", plot="baselines-latency.png")
    rep.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
