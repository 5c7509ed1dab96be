"""Redis pub/sub for ``make bench-peers`` (``bench.peers``), when ``redis-server`` is on PATH
and redis-py is installed: one publisher, one subscriber, delivered msg/s. The server is
started on a free loopback port and stopped by its pid; when absent the run says it was
skipped and why.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from bench.procs import Control, Group

if TYPE_CHECKING:
    from bench.peers import PeerProfile

_START: Final = 30.0
_MARGIN: Final = 15.0


def redis_missing() -> str | None:
    """Why Redis pub/sub cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install redis)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throw-away redis-server on loopback; ready when it says so, stopped by its pid."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._log: threading.Thread | None = None
        exe = shutil.which("redis-server") or "redis-server"
        args = f"--port {self.port} --bind 127.0.0.1 --appendonly no --loglevel notice"
        self.proc = subprocess.Popen(
            [exe, *args.split(), "--save", ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(_START)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Read its log on a thread (so the pipe never fills) until it says it is ready."""
        seen = threading.Event()  # set when ready, or at EOF (the server died)
        ok: list[bool] = []
        tail = bytearray()

        def drain() -> None:
            out = self.proc.stdout
            assert out is not None
            for line in iter(out.readline, b""):  # ends at EOF, when the server exits
                tail[:] = (tail + line)[-2000:]
                if b"Ready to accept connections" in line:
                    ok.append(True)
                    seen.set()
            seen.set()

        self._log = threading.Thread(target=drain, name="redis-log", daemon=True)
        self._log.start()
        if not seen.wait(timeout) or not ok:
            raise RuntimeError(f"redis-server did not start: {tail.decode(errors='replace')}")

    def close(self) -> None:
        """Terminate, wait, kill: this pid only."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.join(5)  # EOF once the server is gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _redis_pub(ctl: Control, port: int, duration: float, size: int) -> dict[str, float]:
    """Publish sequence-numbered messages, pipelined 100 at a time, then END until stop."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        ctl.ready()
        if ctl.receive(_START) != "go":
            return {"published": 0.0, "published_per_s": 0.0}
        pad = bytes(max(0, size - 9))
        seq = 0
        start = time.perf_counter()
        end = start + duration
        while time.perf_counter() < end and not ctl.should_stop():
            pipe = r.pipeline(transaction=False)
            for s in range(seq, seq + 100):
                pipe.publish("bench", b"D" + s.to_bytes(8, "little") + pad)
            pipe.execute()
            seq += 100
        elapsed = time.perf_counter() - start
        while not ctl.should_stop():
            r.publish("bench", b"E")
            ctl.wait_stop(0.01)
        return {"published": float(seq), "published_per_s": seq / elapsed}
    finally:
        r.close()


def _redis_sub(ctl: Control, port: int) -> dict[str, float]:
    """Count data messages until END; say 'joined' once the subscription is confirmed."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    ps = r.pubsub()
    try:
        ps.subscribe("bench")
        ctl.ready()
        received = first = last = 0
        clock = time.perf_counter_ns
        while not ctl.should_stop():
            m = ps.get_message(timeout=0.1)
            if m is None:
                continue
            if m["type"] == "subscribe":
                ctl.note("joined")
                continue
            data = m["data"]
            if data[:1] == b"E":
                break
            received += 1
            last = clock()
            if first == 0:
                first = last
        return {"received": float(received), "first_ns": float(first), "last_ns": float(last)}
    finally:
        ps.close()
        r.close()


def redis_pubsub(p: PeerProfile, size: int = 64) -> dict[str, Any]:
    """One publisher -> redis-server -> one subscriber: delivered msg/s and drops."""
    run = p.duration + _START + _MARGIN
    server = RedisServer()
    try:
        with Group() as g:
            sub = g.spawn("redis-sub", _redis_sub, server.port, max_run=run)
            pub = g.spawn("redis-pub", _redis_pub, server.port, p.duration, size, max_run=run)
            sub.wait_ready()
            sub.expect("note", _START)
            pub.wait_ready()
            pub.send("go")
            got = sub.result(run)
            pub.request_stop()
            sent = pub.result(_MARGIN)
    finally:
        server.close()
    secs = (got["last_ns"] - got["first_ns"]) / 1e9
    published = sent["published"]
    return {
        "published": published,
        "published_per_s": sent["published_per_s"],
        "delivered": got["received"],
        "delivered_per_s": got["received"] / secs if secs > 0 else 0.0,
        "drop_pct": 100.0 * (published - got["received"]) / published if published else 0.0,
    }


# --------------------------------------------------------------------------- the run
