"""What every raw pyzmq baseline side shares: CURVE keys and a ZAP handler that admits only
the client key (as the mesh runs), sockets bound on loopback, the start handshake.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.auth.thread import ThreadAuthenticator

from bench.procs import Control

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
START_S: Final = 30.0  # seconds a scenario allows its sides to start
MARGIN_S: Final = 15.0  # seconds past a scenario's duration before a side is declared stuck


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


def make_context(
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


def close_context(ctx: zmq.Context[Any], auth: ThreadAuthenticator | None, linger: int = 0) -> None:
    """Close every socket; a side whose last message is an END marker keeps ``linger`` ms
    so the marker (and the frames queued before it) still leave."""
    if auth is not None:
        auth.stop()
    ctx.destroy(linger=linger)


def curve_server(sock: zmq.Socket[Any], keys: Keys | None) -> zmq.Socket[Any]:
    if keys is not None:
        sock.curve_server = True
        sock.curve_secretkey = keys.server_secret
        sock.curve_publickey = keys.server_public
    return sock


def curve_client(sock: zmq.Socket[Any], keys: Keys | None) -> zmq.Socket[Any]:
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.client_public
        sock.curve_secretkey = keys.client_secret
    return sock


def bind_loopback(sock: zmq.Socket[Any]) -> str:
    sock.bind(LOOPBACK)
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


def curve_dealer(ctx: zmq.Context[Any], endpoint: str, keys: Keys | None) -> zmq.Socket[Any]:
    sock = curve_client(ctx.socket(zmq.DEALER), keys)
    sock.sndtimeo = SEND_TIMEOUT_MS
    sock.connect(endpoint)
    return sock


def wait_go(ctl: Control) -> None:
    """Say ready, then wait for the parent's go (sent once every other side is up)."""
    ctl.ready()
    if ctl.receive(START_S) != "go":
        raise TimeoutError("no go from the parent")


@contextmanager
def started_dealer(ctl: Control, endpoint: str, keys: Keys | None, *, linger: int = 0
                   ) -> Iterator[zmq.Socket[Any]]:
    """A client side's DEALER: connected (CURVE when ``keys``), told to go, warmed up; its
    context closed after, with ``linger`` ms for what is still queued."""
    ctx, _ = make_context(keys, zap=False)
    try:
        sock = curve_dealer(ctx, endpoint, keys)
        wait_go(ctl)
        warm_up(sock, 50)
        yield sock
    finally:
        close_context(ctx, None, linger=linger)


def warm_up(sock: zmq.Socket[Any], n: int) -> None:
    """A few round trips so the CURVE handshake and TCP warm-up stay out of the samples."""
    for _ in range(n):
        sock.send_multipart([SERVICE, b"warm"])
        if not sock.poll(int(START_S * 1000)):
            raise TimeoutError("no reply during warm-up")
        sock.recv_multipart()


def tight_timer_slack() -> None:
    """Ask Linux for 1 us timer slack (default 50 us) so select() wakes on schedule.

    Without it the open-loop client itself sends ~60-90 us late, and that lag (rightly
    charged by the coordinated-omission correction) would be the client's, not the broker's.
    """
    try:
        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns
    except (OSError, AttributeError):
        pass


def keys_for(secure: bool) -> Keys | None:
    return Keys.new() if secure else None
