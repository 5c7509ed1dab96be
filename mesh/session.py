"""A client connection's session with the router: HELLO and WELCOME, the CURVE handshake's
outcome, the access token presented (fetched and refreshed by :mod:`mesh.token_side`), and
ERRORs (a request's, handed to its caller; the session's own: unknown, refused).

A mixin of :class:`mesh.core.Core`, off the hot path: the core moves messages, this keeps
the session they travel in alive across token expiry and router restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

from mesh import batch
from mesh.errors import (
    Error,
    ErrorCode,
    Unauthenticated,
    Unavailable,
    error_from_code,
)
from mesh.wire import PROTOCOL_VERSION, Cmd, Flag, pack_route, parse_error
from proto import agp_pb2

log = logging.getLogger("agp.client")

_TAKES_BATCHES = int(Flag.BATCH)  # on HELLO and WELCOME: this side takes BATCH messages
_HELLO_FLAGS = _TAKES_BATCHES if batch.ENABLED else 0


def _resolve(waiter: Any, result: Any) -> None:
    if not waiter.done():
        waiter.set_result(result)


def _fail(waiter: Any, exc: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


MAX_HELLOS_KEPT = 1024  # recent HELLOs whose answer (WELCOME or ERROR) is recognised


class Security:
    """What a client needs on a secure mesh: its keypair, the router's public key (z85),
    and where its access token comes from.

    With no ``token_provider`` the token is fetched over the mesh itself: a connection whose
    CURVE key is enrolled may ask ``agp/system/auth`` for a token bound to that key (the key
    authenticates the client, as a TLS client certificate does in RFC 8705), then says HELLO
    again with it. Tokens are refreshed on their own at 80% of their lifetime (a provider's
    token: of what its ``exp`` leaves; the provider is asked again when the router refuses
    its token, with a growing wait between asks).
    """

    def __init__(self, public: bytes, secret: bytes, server_public: bytes,
                 token_provider: Callable[[], str] | None = None) -> None:
        self.public = public
        self.secret = secret
        self.server_public = server_public
        self.token_provider = token_provider
        self.token = ""
        self.token_expires = 0.0  # loop time
        self.token_lifetime = 0.0

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class SessionSide:
    """HELLO/WELCOME, handshake failures and tokens, for :class:`mesh.core.Core`."""

    # provided by Core
    loop: asyncio.AbstractEventLoop | None
    sock: zmq.Socket[Any] | None
    security: Security | None
    name: str
    kind: int
    connected: bool
    router_id: str
    welcome: agp_pb2.Welcome | None
    epoch: int
    max_send: int
    batching: bool
    auth_failed: bool
    pending: dict[int, Any]
    counters: dict[str, int]
    subs: Any
    on_session: Callable[[], None] | None
    on_send_refused: Callable[[str], None] | None
    _ids: Any
    _outbox: batch.Outbox
    _resend: list[int]
    _hello_waiters: list[asyncio.Future[None]]
    _hello_sent_at: float
    _hello_ids: dict[int, int]
    _hellos: int
    _live_hellos: set[int]
    _refreshing: bool
    _token_refused: bool
    _token_attempts: int
    _token_retry_at: float
    _started: bool
    _monitor: zmq.Socket[Any] | None
    _send_outbox: Any
    send_frames: Any
    start_request: Any
    _count: Any
    _fetch_token: Any  # TokenSide
    _ask_provider_again: Any

    def _watch_handshake(self, sock: zmq.Socket[Any]) -> None:
        """A refused CURVE handshake is final in libzmq (no retry): surface it at once."""
        assert self.loop is not None
        mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                      | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._monitor = mon

        def on_event() -> None:
            from zmq.utils.monitor import recv_monitor_message

            while True:
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.ZMQError:
                    return
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    if self.router_id:  # a new connection (a restarted router, say): HELLO
                        self._send_hello()  # now, not at the next heartbeat
                    continue
                if event["event"] & (zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                    self.auth_failed = True
                    exc = Unauthenticated(
                        "the router refused this connection's CURVE handshake (unknown or "
                        "revoked key, or wrong server key)")
                    for w in self._hello_waiters:
                        _fail(w, exc)
                    self._hello_waiters.clear()
                    for p in list(self.pending.values()):
                        _fail(p.waiter, exc)
                    self.pending.clear()

        self.loop.add_reader(mon.getsockopt(zmq.FD), on_event)
        self.loop.call_soon(on_event)

    async def wait_session(self, timeout: float) -> None:
        """Wait until a session with the router is up (after a restart, say)."""
        if self.connected:
            return
        assert self.loop is not None
        waiter = self.loop.create_future()
        self._hello_waiters.append(waiter)
        await asyncio.wait_for(waiter, timeout)

    def _send_hello(self) -> None:
        assert self.loop is not None
        sec = self.security
        if sec is not None and self._token_refused and sec.token_provider is not None:
            self._ask_provider_again()
        token = self.security.token if self.security is not None else ""
        public = self.security.public if self.security is not None else b""
        hello = agp_pb2.Hello(protocol_version=PROTOCOL_VERSION, peer_name=self.name,
                              token=token, kind=self.kind, public_key=public)
        self._hello_sent_at = self.loop.time()
        if self.sock is None:
            return
        ident = next(self._ids)  # the request id space: an ERROR names what it answers
        self._hellos += 1  # what was sent before it (Pending.hellos) is older than its session
        if len(self._hello_ids) >= MAX_HELLOS_KEPT:
            del self._hello_ids[next(iter(self._hello_ids))]
        self._hello_ids[ident] = self._hellos
        if self.connected:  # a token on a live session: its WELCOME must be taken
            if len(self._live_hellos) > 16:
                self._live_hellos.clear()
            self._live_hellos.add(ident)
        if self._outbox:
            self._send_outbox()
        try:
            self.sock.send_multipart([pack_route(Cmd.HELLO, _HELLO_FLAGS, 0, 0, ident), b"",
                                      hello.SerializeToString()], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["send_errors"] += 1

    def refresh_token(self) -> None:
        """Present a fresh token on the live connection (HELLO again)."""
        self._send_hello()

    def _on_welcome(self, msg: list[bytes], ident: int = 0) -> None:
        try:
            welcome = agp_pb2.Welcome.FromString(msg[2])
        except Exception:
            self.counters["malformed"] += 1
            return
        restarted = bool(self.router_id) and welcome.router_id != self.router_id
        # the same router, another session (0: a router that numbers none): it forgot this
        # client's (expired it, or its connection was re-made) and the calls sent in it
        kept = self.welcome.session_id if self.welcome is not None else 0
        lost = (not restarted and bool(kept) and bool(welcome.session_id)
                and welcome.session_id != kept)
        if self.connected and not restarted and not lost and ident not in self._live_hellos:
            # the answer to a HELLO resent while the router was out of reach (a partition
            # held them all): the session is already up, so it changes nothing
            self.counters["stale_welcomes"] = self.counters.get("stale_welcomes", 0) + 1
            return
        self._live_hellos.discard(ident)
        self.welcome = welcome
        if welcome.max_message_bytes:  # (a restarted router may take more, or less)
            self.max_send = 2 * welcome.max_message_bytes
        self.router_id = welcome.router_id
        self.connected = True
        self.batching = bool(msg[0][2] & _HELLO_FLAGS)
        if restarted:
            self.epoch += 1
            log.info("router restarted (new id %s); session re-established", welcome.router_id)
            self._fail_lost(self._hello_ids.get(ident, self._hellos + 1))
        elif lost:  # for calls and agents as a restart; not for pub/sub (not the peer's)
            self.epoch += 1
            self._count("sessions_lost")
            log.info("router %s lost this client's session %d; session %d established",
                     welcome.router_id, kept, welcome.session_id)
            self._fail_lost(self._hello_ids.get(ident, self._hellos + 1),
                            "the router lost this client's session with this request in flight")
        for rid in self._resend:
            p = self.pending.get(rid)
            if p is not None:
                p.hellos = self._hellos  # (re)sent in this session
                try:
                    self.send_frames(p.frames)
                except Error as exc:
                    self.pending.pop(rid, None)
                    _fail(p.waiter, exc)
        self._resend.clear()
        self.subs.on_session(welcome, restarted)
        sec = self.security
        if sec is not None and sec.token:  # its token was taken: the next refusal is new
            self._token_refused, self._token_attempts, self._token_retry_at = False, 0, 0.0
        elif sec is not None and self._started:
            self._fetch_token()  # (a failed one is tried again by _tick, after a wait)
        for w in self._hello_waiters:
            _resolve(w, None)
        self._hello_waiters.clear()
        if self.on_session is not None:
            self.on_session()

    def _fail_lost(self, hello: int,
                   why: str = "the router restarted with this request in flight") -> None:
        """A new router (or a new session of the same one) answered HELLO number ``hello``:
        what was sent before that HELLO went to the old router (session) and died with it
        (unless the new one refused it: ``_resend``); what was sent after it reached the new
        one behind it, and will be answered. ``why`` is the Unavailable's message."""
        resend = set(self._resend)
        for rid, p in list(self.pending.items()):
            if (p.hellos < hello and rid not in resend and p.frames
                    and p.frames[0][1] != Cmd.READY):
                del self.pending[rid]
                _fail(p.waiter, Unavailable(why))

    def _on_error(self, route: Any, msg: list[bytes], ident: int) -> None:
        """An ERROR: a pending request's fails its caller; UNKNOWN_SESSION says HELLO again
        (and resends what it refused); UNAUTHENTICATED fails whoever waits for a session."""
        code, message, details = parse_error(route, msg)
        if code == ErrorCode.UNKNOWN_SESSION:
            p = self.pending.get(ident)
            if p is not None and p.instance and p.frames[0][1] == Cmd.STREAM_OPEN:
                # a chunk (or the end) of a stream whose open a router answered and lost:
                # opened anew, the agent would take the rest as a whole stream
                del self.pending[ident]
                self._count("streams_lost_to_restart")
                _fail(p.waiter, Unavailable("the router lost this stream (restarted?); the "
                                            "chunks sent so far are gone"))
            elif p is not None:
                self._resend.append(ident)  # refused before any router took it: sent again
            self.connected = False
            self._send_hello()
            return
        if not ident and code == ErrorCode.NOT_A_RECIPIENT and len(msg) > 1 and msg[1]:
            # an instance refused a sealed send of ours: the keys it was sealed for predate
            # that instance (counted by the instance as a drop). The router sends it with no
            # call id, so it fails no call of ours; the service is read from the instance
            # name the router stamped ("service/instance"), not from anything the instance
            # says: it can only speak for its own service.
            self._count("sends_refused")
            service = msg[1].decode(errors="replace").rpartition("/")[0]
            if service and self.on_send_refused is not None:
                self.on_send_refused(service)
            return
        if ident and ident not in self._hello_ids:
            p = self.pending.pop(ident, None)
            if p is not None:
                if len(msg) > 1 and msg[1] and msg[1][:1] != b"\x01":
                    details.setdefault("instance", msg[1].decode(errors="replace"))
                _fail(p.waiter, error_from_code(code, message, details))
            else:  # a fire-and-forget's refusal, or the answer to a call given up
                self._count(f"unclaimed_error_{ErrorCode(code).name.lower()}")
            return
        if code == ErrorCode.UNAUTHENTICATED:
            self.connected = False
            sec = self.security
            if sec is not None and sec.token and sec.token_provider is None:
                sec.token = ""  # expired or revoked: the next HELLO bootstraps a fresh one
            elif sec is not None and sec.token_provider is not None:
                self._token_refused = True  # the next HELLO asks the provider again
            exc = error_from_code(code, message, details)
            for w in self._hello_waiters:
                _fail(w, exc)
            self._hello_waiters.clear()
            for ident in self._resend:  # they waited for a session that was refused
                p = self.pending.pop(ident, None)
                if p is not None:
                    _fail(p.waiter, exc)
            self._resend.clear()
            log.error("router refused this client: %s", message)
            return
        if code == ErrorCode.FORBIDDEN and len(msg) > 1 and msg[1][:1] == b"\x01":
            self.subs.refused(msg[1][1:], error_from_code(code, message, details))
            return
        log.warning("error from router: %s %s", code.name, message)
