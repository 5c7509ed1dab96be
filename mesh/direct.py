"""Streams that skip the router: the open goes through it, the chunks go peer to peer.

Why: through the router every chunk is decrypted and encrypted again by its CURVE sessions
(~0.9 GB/s here for 1 MiB chunks); peer to peer it is CURVE once (~2 GB/s), and that CURVE
session is end to end, as there is no hop between.

How (DESIGN.md, "Paths to speed"): a client asks for a direct stream with ``Flag.DIRECT`` on
its STREAM_OPEN; the router authorizes it like any stream and checks that the key the client
names in the envelope is the key its connection authenticated with. The agent answers, in
its first credit (through the router, so the client knows it comes from the instance the
router picked), with an *offer*: a random 16-byte ticket, its stream endpoint and its public
key. The client connects there over CURVE with the agent's key as the server key; the
agent's ZAP handler lets in only keys that hold an offer, and a ticket binds to the first
connection whose authenticated key is the offer's. Chunks, the end and credits then flow on
that connection; the final reply, errors and cancellation still go through the router, so
a dead agent or client is noticed by the router's heartbeats as for any stream.

Frames on the direct connection: ``[route, ticket, payload...]`` from the client
(STREAM_OPEN binds, STREAM_DATA, STREAM_END), ``[route]`` from the agent (STREAM_CREDIT) or
an ERROR. Every refusal is counted by reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd, error_frames, pack_route
from mesh.zmqio import readable, recv_frames, recv_frames_with_user, send_frames

log = logging.getLogger("agp.direct")

TICKET_LEN: Final = 16
DRAIN_BATCH: Final = 256
HWM: Final = 1000
IDLE_CLOSE: Final = 5.0  # seconds a client's direct link outlives its last stream


def advertise_host(router_endpoint: str) -> str:
    """The address of this host that the router's host reaches: peers on the router's
    network can connect to it. Loopback when the router is on loopback."""
    host = urlsplit(router_endpoint).hostname or "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    except ValueError:
        if host == "localhost":
            return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP connect sends nothing: it only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


@dataclass(eq=False)
class Offer:
    """One stream offered on the direct socket, waiting for (or bound to) its client."""

    ticket: bytes
    ident: int
    key: str | None  # the client's CURVE key (z85) the router vouched for; None when insecure
    sink: Any  # the agent's StreamIn: push(frames), end()
    rid: bytes | None = None  # the connection it is bound to
    on_bound: Callable[[], None] | None = field(default=None, repr=False)


class _KeyGate:
    """ZAP callback: a CURVE client gets in only while it holds an offer."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        return self.keys.get(key, 0) > 0


class DirectServer:
    """An agent's ROUTER socket for direct streams, read on the agent's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, router_endpoint: str, *,
                 keypair: tuple[bytes, bytes] | None, bind_host: str | None = None) -> None:
        self.loop = loop
        self.ctx: zmq.Context[Any] = zmq.Context(io_threads=1)  # its own I/O thread
        self.gate = _KeyGate()
        self.auth: ThreadAuthenticator | None = None
        self.offers: dict[bytes, Offer] = {}
        self.dropped: dict[str, int] = {}
        self._drain_scheduled = False
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        if keypair is not None:
            self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("agp.direct.zap"))
            self.auth.start()
            self.auth.configure_curve_callback("*", credentials_provider=self.gate)
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = keypair
        host = advertise_host(router_endpoint)
        bind = bind_host or os.environ.get("AGP_STREAM_BIND") or host
        port = sock.bind_to_random_port(f"tcp://{bind}")
        self.endpoint = f"tcp://{host if bind in ('0.0.0.0', '*') else bind}:{port}"
        self.sock = sock
        loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)

    # ------------------------------------------------------------------ offers
    def offer(self, ident: int, key: str | None, sink: Any,
              on_bound: Callable[[], None]) -> bytes:
        ticket = secrets.token_bytes(TICKET_LEN)
        self.offers[ticket] = Offer(ticket, ident, key, sink, on_bound=on_bound)
        if key is not None:
            k = key.encode()
            self.gate.keys[k] = self.gate.keys.get(k, 0) + 1
        return ticket

    def withdraw(self, ticket: bytes) -> None:
        offer = self.offers.pop(ticket, None)
        if offer is not None and offer.key is not None:
            k = offer.key.encode()
            left = self.gate.keys.get(k, 0) - 1
            if left > 0:
                self.gate.keys[k] = left
            else:
                self.gate.keys.pop(k, None)

    def grant(self, ticket: bytes, n: int) -> bool:
        """Send ``n`` credits on the offer's connection; False if it is not bound (yet)."""
        offer = self.offers.get(ticket)
        if offer is None or offer.rid is None:
            return False
        try:
            send_frames(self.sock, [offer.rid, pack_route(Cmd.STREAM_CREDIT, 0, 0, n,
                                                          offer.ident)])
        except zmq.ZMQError:
            self._drop("credit_unroutable")
            return True
        self._after_send()
        return True

    # ------------------------------------------------------------------ receiving
    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _after_send(self) -> None:
        if not self._drain_scheduled:  # a send may eat the FD's edge: look at EVENTS later
            self._drain_scheduled = True
            self.loop.call_soon(self._check_events)

    def _check_events(self) -> None:
        self._drain_scheduled = False
        if self.sock is not None and readable(self.sock):
            self._on_readable()

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(DRAIN_BATCH):
            try:
                msg, user = recv_frames_with_user(sock, views=True)  # chunks: no copy
            except zmq.ZMQError:
                return
            try:
                self._handle(msg, user)
            except Exception:
                self._drop("malformed")
                log.debug("direct message refused", exc_info=True)
        self._drain_scheduled = True
        self.loop.call_soon(self._check_events)

    def _refuse(self, rid: bytes, reason: str, code: ErrorCode, message: str,
                ident: int) -> None:
        self._drop(reason)
        try:
            send_frames(self.sock, [rid, *error_frames(code, message, ident)])
        except zmq.ZMQError:
            pass

    def _handle(self, msg: list[bytes], user: str | None) -> None:
        if len(msg) < 3 or len(msg[1]) != ROUTE.size:
            self._drop("malformed")
            return
        rid = msg[0]
        _, cmd, flags, _, _, ident = ROUTE.unpack(msg[1])
        offer = self.offers.get(msg[2])
        if offer is None or offer.ident != ident:
            self._refuse(rid, "no_such_ticket", ErrorCode.CANCELLED, "no such direct stream",
                         ident)
            return
        if cmd == Cmd.STREAM_OPEN:
            if offer.rid is not None or (offer.key is not None and user != offer.key):
                self._refuse(rid, "ticket_not_yours", ErrorCode.FORBIDDEN,
                             "this direct stream belongs to another key", ident)
                return
            offer.rid = rid
            if offer.on_bound is not None:
                offer.on_bound()
            return
        if rid != offer.rid:
            self._refuse(rid, "ticket_not_yours", ErrorCode.FORBIDDEN,
                         "this direct stream belongs to another connection", ident)
            return
        if cmd == Cmd.STREAM_DATA:
            # the shape the agent's stream expects: route, address, header, payload...
            offer.sink.push([msg[1], b"", b"", *msg[3:]], direct=True)
        elif cmd == Cmd.STREAM_END:
            offer.sink.end()
        else:
            self._drop("malformed")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except Exception:
                pass
            self.sock.close(linger=0)
            self.sock = None  # type: ignore[assignment]
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.term()


class DirectLinks:
    """A client's connections to agents' stream endpoints, one per endpoint, shared by the
    streams to it and closed ``idle`` seconds after the last of them finished.

    Why close: an agent that restarts binds a new random port, and libzmq would keep
    reconnecting (over CURVE) to the dead endpoint for the life of the client, one socket
    and one reader per endpoint ever used. Why wait a little: consecutive streams to one
    agent reuse the connection instead of paying a CURVE handshake each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 keypair: tuple[bytes, bytes] | None,
                 counters: dict[str, int] | None = None, *,
                 idle: float = IDLE_CLOSE) -> None:
        self.loop = loop
        self.keypair = keypair
        self.idle = idle  # seconds a link with no stream stays open for the next stream
        # what an agent sent that no stream takes, counted as ``direct_<reason>`` (the
        # client's counters: agp_client_dropped_total)
        self.counters: dict[str, int] = counters if counters is not None else {}
        self.ctx: zmq.Context[Any] | None = None
        self.socks: dict[tuple[str, bytes], zmq.Socket[Any]] = {}
        self.on_credit: dict[int, Callable[[int], None]] = {}
        self.on_error: dict[int, Callable[[list[bytes]], None]] = {}
        self.closed_links = 0  # links closed once idle (observability, tests)
        self._users: dict[tuple[str, bytes], set[int]] = {}  # link -> streams using it
        self._link_of: dict[int, tuple[str, bytes]] = {}  # stream -> its link
        self._idle_timers: dict[tuple[str, bytes], asyncio.TimerHandle] = {}

    def link(self, endpoint: str, server_key: bytes, ident: int) -> zmq.Socket[Any]:
        """The connection to ``endpoint`` for stream ``ident`` (made if there is none), held
        for it until ``forget(ident)``."""
        key = (endpoint, server_key)
        timer = self._idle_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        sock = self.socks.get(key)
        if sock is None:
            sock = self._connect(endpoint, server_key)
            self.socks[key] = sock
        self._users.setdefault(key, set()).add(ident)
        self._link_of[ident] = key
        return sock

    def _connect(self, endpoint: str, server_key: bytes) -> zmq.Socket[Any]:
        if self.ctx is None:
            self.ctx = zmq.Context(io_threads=1)  # CURVE for bulk data off the router's thread
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        if self.keypair is not None:
            sock.curve_publickey, sock.curve_secretkey = self.keypair
            sock.curve_serverkey = server_key
        sock.connect(endpoint)
        self.loop.add_reader(sock.getsockopt(zmq.FD), self.poll, sock)
        return sock

    def send(self, sock: zmq.Socket[Any], frames: list[Any]) -> None:
        send_frames(sock, frames)

    def poll(self, sock: zmq.Socket[Any]) -> None:
        """Take every credit or error waiting on ``sock`` (called before waiting, too: a
        send can consume the edge of libzmq's edge-triggered FD)."""
        for _ in range(DRAIN_BATCH):
            try:
                msg = recv_frames(sock)
            except zmq.ZMQError:
                return
            if not msg or len(msg[0]) != ROUTE.size:
                self._drop("direct_malformed")
                continue
            _, cmd, _, _, value, ident = ROUTE.unpack(msg[0])
            if cmd == Cmd.STREAM_CREDIT:
                cb = self.on_credit.get(ident)
                if cb is None:
                    self._drop("direct_late")  # the stream ended meanwhile
                else:
                    cb(value)
            elif cmd == Cmd.ERROR:
                err = self.on_error.get(ident)
                if err is None:
                    self._drop("direct_late")
                else:
                    err(msg)
            else:
                self._drop("direct_malformed")

    def _drop(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def forget(self, ident: int) -> None:
        """Stream ``ident`` finished (idempotent): what comes for it now is late, and its
        link closes ``idle`` seconds after its last stream, unless one takes it again."""
        self.on_credit.pop(ident, None)
        self.on_error.pop(ident, None)
        key = self._link_of.pop(ident, None)
        if key is None:
            return
        users = self._users.get(key)
        if users is not None:
            users.discard(ident)
            if users:
                return
        if key not in self._idle_timers:  # (never now: poll may be reading this socket)
            self._idle_timers[key] = self.loop.call_later(max(self.idle, 0.0),
                                                          self._close_idle, key)

    def _close_idle(self, key: tuple[str, bytes]) -> None:
        self._idle_timers.pop(key, None)
        if self._users.get(key):  # taken again meanwhile
            return
        self._users.pop(key, None)
        sock = self.socks.pop(key, None)
        if sock is None:
            return
        self.poll(sock)  # what waits there is for streams that ended: counted as late
        self._close_socket(sock)
        self.closed_links += 1

    def _close_socket(self, sock: zmq.Socket[Any]) -> None:
        try:  # the reader goes first: the FD number may be reused by the next socket
            self.loop.remove_reader(sock.getsockopt(zmq.FD))
        except Exception:
            pass
        sock.close(linger=0)

    def close(self) -> None:
        for timer in self._idle_timers.values():
            timer.cancel()
        self._idle_timers.clear()
        for sock in self.socks.values():
            self._close_socket(sock)
        self.socks.clear()
        self._users.clear()
        self._link_of.clear()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
