"""A loopback TCP proxy that can blackhole its connections, then heal them (partition tests).

Peers connect to :attr:`BlackholeProxy.endpoint` (an ephemeral 127.0.0.1 port); each
connection is forwarded to ``upstream`` by two pump threads. :meth:`blackhole` silently stops
forwarding in both directions while every TCP connection stays open: no FIN, no RST, so
neither side learns of the partition from the kernel and must notice the silence itself
(heartbeats). :meth:`heal` resumes forwarding. What happens to the bytes sent meanwhile is
the ``mode``:

- ``"hold"``: the pumps stop reading; bytes wait in the kernel buffers and the proxy, and are
  delivered in order after the heal, as TCP retransmission does across a short partition.
- ``"drop"``: the pumps read and discard. A ZMTP/CURVE stream with a hole cannot go on, so at
  the heal every connection that lost bytes is reset (RST), as a TCP connection that timed
  out during a long partition would be; the peers reconnect through the healed proxy.

Every wait inside is bounded (0.05 s select ticks); :meth:`close` joins every thread.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Final, Literal

Mode = Literal["hold", "drop"]
TICK: Final = 0.05
CHUNK: Final = 65536
MAX_CONNECTIONS: Final = 64


class _Pair:
    """One proxied connection: the accepted side and the upstream side."""

    def __init__(self, down: socket.socket, up: socket.socket) -> None:
        self.down, self.up = down, up
        self.lost = False  # bytes were discarded in drop mode: reset at the heal
        self.threads: list[threading.Thread] = []

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), not a polite FIN."""
        for s in (self.down, self.up):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class BlackholeProxy:
    """Forward 127.0.0.1:<ephemeral> to ``upstream``; blackhole and heal on command."""

    def __init__(self, upstream: str, *, mode: Mode = "hold") -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self.upstream = (host.strip("[]"), int(port))
        self.mode: Mode = mode
        self.forwarded = 0  # bytes delivered, both directions
        self.discarded = 0  # bytes dropped in drop mode
        self.accepted = 0
        self._open = threading.Event()  # set: forwarding; clear: blackholed
        self._open.set()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept, name="blackhole-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open."""
        self._open.clear()

    def heal(self) -> int:
        """Forward again; in drop mode, reset connections that lost bytes. Returns resets."""
        resets = 0
        with self._lock:
            if self.mode == "drop":
                for pair in self._pairs:
                    if pair.lost:
                        pair.reset()
                        resets += 1
            self._open.set()
        return resets

    def close(self) -> None:
        """Stop everything and join every thread (bounded)."""
        self._closing.set()
        self._open.set()
        self._listener.close()
        self._acceptor.join(5)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.reset()
            for t in pair.threads:
                t.join(5)

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads --------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], TICK)
                if not ready:
                    continue
                down, _ = self._listener.accept()
            except (OSError, ValueError):
                return  # listener closed
            if len(self._pairs) >= MAX_CONNECTIONS:
                down.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            pair = _Pair(down, up)
            pair.threads = [
                threading.Thread(target=self._pump, args=(pair, down, up), daemon=True,
                                 name=f"blackhole-up-{self.accepted}"),
                threading.Thread(target=self._pump, args=(pair, up, down), daemon=True,
                                 name=f"blackhole-down-{self.accepted}"),
            ]
            self.accepted += 1
            with self._lock:
                self._pairs.append(pair)
            for t in pair.threads:
                t.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closing.is_set():
                if self.mode == "hold" and not self._open.wait(TICK):
                    continue  # blackholed: leave the bytes where they are
                ready, _, _ = select.select([src], [], [], TICK)
                if not ready:
                    continue
                data = src.recv(CHUNK)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self.mode == "drop":
                    with self._lock:
                        if not self._open.is_set():
                            pair.lost = True
                            self.discarded += len(data)
                            continue
                while not self._open.wait(TICK):  # hold: read just as the blackhole began
                    if self._closing.is_set():
                        return
                dst.sendall(data)
                self.forwarded += len(data)
        except (OSError, ValueError):
            return  # reset at the heal, closed, or the peer went away
