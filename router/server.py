"""The router's socket loop: one ROUTER for every DEALER peer, one XPUB for subscribers.

The loop polls, then drains every ready message without blocking (up to ``drain_batch``)
before it looks at the clock: one ``poll`` per burst instead of one ``await`` per message is
what lets a single Python process route tens of thousands of requests a second. On the hot
path there is no logging, no protobuf decoding (the route frame is 16 fixed bytes) and no
copy of payload frames: the received list is re-addressed in place and sent on.

Every message a peer sends is either delivered, or answered with an error, or counted in
``stats.drops`` with its reason. Nothing a peer sends can raise out of the loop.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import zmq

from mesh import batch, telemetry
from mesh.errors import ErrorCode, Malformed, TooLarge
from mesh.wire import (
    DISCONNECT_FRAME,
    MAX_ADDRESS_BYTES,
    MAX_TIMEOUT_MS,
    PROTOCOL_VERSION,
    ROUTE,
    Cmd,
    Flag,
    check_sizes,
    error_frames,
)
from mesh.zmqio import readable, recv_frames, recv_frames_with_user
from router.access import Access, OpenAccess
from router.config import RouterConfig
from router.in_flight import InFlight
from router.liveness import Liveness
from router.outbound import FLUSH_EVERY, Outbound
from router.outbound import PINNED_MARK as _PINNED
from router.outbound import STREAM_MARK as _STREAM
from router.proxy import PubSubProxy
from router.sessions import Sessions
from router.stats import RouterStats
from router.system import AUTH_SERVICE, REGISTRY_SERVICE, ROUTER_SERVICE, SystemServices
from router.table import Instance, Peer, Queued, RoutingTable, Service

log = logging.getLogger("agp.router")

_REQUEST, _REPLY, _SEND, _PUBLISH = Cmd.REQUEST, Cmd.REPLY, Cmd.SEND, Cmd.PUBLISH
_STREAM_OPEN, _STREAM_DATA, _STREAM_CREDIT = Cmd.STREAM_OPEN, Cmd.STREAM_DATA, Cmd.STREAM_CREDIT
_STREAM_END, _HEARTBEAT, _ERROR = Cmd.STREAM_END, Cmd.HEARTBEAT, Cmd.ERROR
_BATCH, _HELLO = Cmd.BATCH, Cmd.HELLO
_IDEMPOTENT = int(Flag.IDEMPOTENT)
_DIRECT = int(Flag.DIRECT)
_TRACED = telemetry.TRACED_FLAG
SUB_REFUSED = b"\x01"  # address-frame marker: this FORBIDDEN refuses a subscription


def poll_timeout_ms(next_tick: float, now: float) -> int:
    """How long to poll before the next housekeeping tick, in whole milliseconds, rounded
    up: truncated, the last millisecond before each tick was a busy loop of poll(0) that took
    a core from the peers' threads ten times a second (the tick may run up to 1 ms late)."""
    return max(0, math.ceil((next_tick - now) * 1000))


class Router(Sessions, SystemServices, InFlight, Outbound, Liveness):
    """The data plane. ``start()`` binds; ``run()`` loops until ``stop()``."""

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        access: Access | None = None,
        context: zmq.Context[Any] | None = None,
        server_keypair: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self.access: Access = access or OpenAccess()
        self.secure = self.access.secure
        self.ctx = context or zmq.Context.instance()
        self.server_keypair = server_keypair
        self.stats = RouterStats()
        self.table = RoutingTable(self.config.max_queue)
        self.peers: dict[bytes, Peer] = {}
        self.streams: dict[tuple[bytes, int], Instance] = {}
        self.traced: dict[tuple[bytes, int], int] = {}  # sampled requests: start time (ns)
        self.outbox = batch.Outbox()  # messages for the next flush, per peer
        self.endpoint = ""
        self.pub_endpoint = ""
        self.started_at = time.time()
        self._running = False
        self._next_heartbeat = 0.0
        self.now = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        cfg = self.config
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.xpub = self.ctx.socket(zmq.XPUB)
        for s, hwm in ((self.sock, cfg.hwm), (self.xpub, cfg.pub_hwm)):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, hwm)
            s.setsockopt(zmq.RCVHWM, hwm)
            # a single frame past twice the limit cuts the connection inside libzmq;
            # anything between the limit and that is refused with TOO_LARGE
            s.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes)
            if self.server_keypair is not None:
                s.curve_server = True
                s.curve_publickey, s.curve_secretkey = self.server_keypair
                s.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                s.zap_domain = b"agp"
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.sock.bind(cfg.bind)
        self.xpub.bind(cfg.pub_bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.proxy = PubSubProxy(self.xpub, self.access, self.stats, self._subscription_denied)
        self._running = True

    def stop(self) -> None:
        """Ask the loop to end; it does within one tick."""
        self._running = False

    def close(self) -> None:
        for peer in list(self.peers.values()):
            self._send([peer.rid, DISCONNECT_FRAME])
        self._flush()
        self.sock.close(linger=0)
        self.xpub.close(linger=0)

    def run(self) -> None:
        """Poll and drain until stop(); then close the sockets."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        tick = self.config.tick
        next_tick = time.monotonic() + tick
        sock, xpub = self.sock, self.xpub
        try:
            while self._running:
                for s, _ in poller.poll(poll_timeout_ms(next_tick, time.monotonic())):
                    if s is sock:
                        self._drain()
                    elif s is xpub:
                        self.proxy.drain(self.secure)
                now = time.monotonic()
                if now >= next_tick:
                    self._housekeeping(now)
                    next_tick = now + tick
                if self.outbox:
                    self._flush()
        finally:
            self.close()

    # ------------------------------------------------------------------ hot path
    def _drain(self) -> None:
        sock = self.sock
        self.now = time.monotonic()
        handle = self._handle
        secure = self.secure
        outbox = self.outbox
        for i in range(1, self.config.drain_batch + 1):
            try:
                if secure:
                    msg, identity = recv_frames_with_user(sock)
                else:
                    msg = recv_frames(sock)
                    identity = None
            except zmq.Again:
                break
            try:
                handle(msg, identity)
            except Exception:  # nothing a peer sends may stop the router
                self.stats.refuse("unhandled")
                log.debug("message refused", exc_info=True)
            if not i % FLUSH_EVERY and outbox:
                self._flush()  # a long burst does not hold back what is ready
            if i == 1 and not readable(sock):
                break  # most drains hold one message: a look at EVENTS (~1.6 us) ends them
                # cheaper than the recv raising zmq.Again (~3.8 us), before the flush
        if outbox:
            self._flush()

    def _handle(self, msg: list[bytes], identity: str | None) -> None:
        n = len(msg)
        if n < 2 or len(msg[1]) != 16:
            self._malformed(msg, "bad_route_frame", "short message or bad route frame")
            return
        rf = msg[1]
        version, cmd, flags, code, value, ident = ROUTE.unpack(rf)
        rid = msg[0]
        peer = self.peers.get(rid)
        if version != PROTOCOL_VERSION:
            self.stats.drop("version_mismatch")
            self._error(rid, ErrorCode.VERSION_MISMATCH, f"protocol {version} unsupported", ident)
            return
        if peer is None or (self.secure and peer.identity != identity):
            if cmd == Cmd.HELLO:
                self._on_hello(msg, identity, ident)
            elif cmd != Cmd.DISCONNECT:
                self.stats.drop("unknown_session")
                self._error(rid, ErrorCode.UNKNOWN_SESSION, "say HELLO first", ident)
            return
        peer.last_seen = self.now
        try:
            self.stats.bytes_in += check_sizes(msg, self.config.max_message_bytes)
        except TooLarge as exc:
            self.stats.drop("too_large")
            self._error(rid, ErrorCode.TOO_LARGE, exc.message, ident)
            return
        if cmd == _BATCH:
            self._on_batch(peer, msg, value)
        elif cmd == _HELLO:
            self._on_hello(msg, identity, ident)  # a fresh token on a live session
        else:
            self._route(peer, msg, cmd, flags, code, value, ident)

    def _on_batch(self, peer: Peer, msg: list[bytes], count: int) -> None:
        """Handle each message of a BATCH as if it had come alone (its sender's session and
        size checks hold for the whole batch); a nested BATCH or a HELLO is refused."""
        if len(msg) != 3:
            self._malformed(msg, "bad_batch", "a batch is a route frame and one body")
            return
        try:
            messages = batch.unpack(msg[2], count)
        except Malformed as exc:
            self._malformed(msg, "bad_batch", exc.message)
            return
        rid = peer.rid
        route = self._route
        stats = self.stats
        stats.batches_in += 1
        stats.batched_in += count
        for i, sub in enumerate(messages, 1):
            rf = sub[0]
            if len(rf) != 16 or rf[0] != PROTOCOL_VERSION or rf[1] == _BATCH or rf[1] == _HELLO:
                self._malformed([rid], "bad_batched_message", "a batched message must be a "
                                "single, current-version, non-HELLO message")
                continue
            sub.insert(0, rid)
            _, cmd, flags, code, value, ident = ROUTE.unpack(rf)
            try:
                route(peer, sub, cmd, flags, code, value, ident)
            except Exception:  # one bad message spoils none of the others
                stats.refuse("unhandled")
                log.debug("batched message refused", exc_info=True)
            if rid not in self.peers:  # it said goodbye: the rest has no session
                if i < count:
                    stats.drop("after_disconnect", count - i)
                return

    def _route(self, peer: Peer, msg: list[bytes], cmd: int, flags: int, code: int,
               value: int, ident: int) -> None:
        if cmd == _REQUEST or cmd == _SEND or cmd == _STREAM_OPEN:
            self._on_request(peer, msg, cmd, flags, value, ident)
        elif cmd == _REPLY or cmd == _ERROR:
            self._on_reply(peer, msg, ident)
        elif cmd == _PUBLISH:
            self._on_publish(peer, msg)
        elif cmd == _STREAM_DATA or cmd == _STREAM_END:
            self._on_stream_data(peer, msg, ident)
        elif cmd == _STREAM_CREDIT or cmd == Cmd.PROGRESS:
            self._on_to_client(peer, msg, ident)
        elif cmd == Cmd.CANCEL:
            self._on_cancel(peer, msg, ident)
        elif cmd == _HEARTBEAT:
            pass
        elif cmd == Cmd.READY:
            self._on_ready(peer, msg, ident)
        elif cmd == Cmd.DISCONNECT:
            self._on_disconnect(peer, code)
        else:
            self._malformed(msg, "bad_command", f"command {cmd} not accepted from a peer")

    def _on_request(
        self, peer: Peer, msg: list[bytes], cmd: int, flags: int, value: int, ident: int
    ) -> None:
        if len(msg) < 4:
            self._malformed(msg, "short_request", "request without address and header", ident)
            return
        dest = msg[2]
        if len(dest) > MAX_ADDRESS_BYTES:
            self._malformed(msg, "long_address",
                            f"an address is at most {MAX_ADDRESS_BYTES} bytes", ident)
            return
        target = self.table.resolve(dest)
        if self.secure:
            # policy is decided on the name the address resolves to: a short alias reaches
            # nothing its full name may not
            name = dest if target is None else target.name
            if peer.session is not None:
                action = "request" if cmd == _REQUEST else "send" if cmd == _SEND else "stream"
                if not self.access.allowed(peer.session, action, name):
                    self._deny(peer, action, name, ident)
                    return
            if (cmd == _STREAM_OPEN and flags & _DIRECT
                    and not self._direct_key_is_own(peer, msg)):
                self._deny(peer, "stream",
                           b"(a direct stream under a key not the connection's)", ident)
                return
            # the registry's door, whether it is addressed as a service or as an instance
            service = target.service.name if isinstance(target, Instance) else name
            if service == REGISTRY_SERVICE and not self._registry_allowed(peer, msg):
                self._deny(peer, "register", b"(registration outside its namespace or key)",
                           ident)
                return
        if target is None:
            if dest == ROUTER_SERVICE and cmd == _REQUEST:
                self._on_router_service(peer, msg, ident)
                return
            if dest == AUTH_SERVICE and cmd == _REQUEST and self.secure:
                self._on_auth_service(peer, msg, ident)
                return
            self.stats.drop("no_such_service")
            self._error(peer.rid, ErrorCode.NO_SUCH_SERVICE,
                        f"no service or instance named {dest[:MAX_ADDRESS_BYTES]!r}", ident)
            return
        if value == 0 or value > MAX_TIMEOUT_MS:
            value = self.config.default_timeout_ms
        deadline = self.now + value / 1000.0
        if cmd == _SEND:
            self.stats.sends += 1
            inst = target if isinstance(target, Instance) else target.policy.pick(
                target.instances, False)
            if inst is None or not inst.accepting:  # (a draining one would drop it unsaid)
                self.stats.drop("send_no_instance")
                self._error(peer.rid, ErrorCode.OVERLOADED, "no instance accepting", ident)
                return
            msg[0] = inst.peer.rid
            msg[2] = peer.rid
            self._send(msg)  # if it cannot go, the client hears so (router.outbound)
            if flags & _TRACED and telemetry.ENABLED:  # its hop: no reply will end it
                t = time.time_ns()
                telemetry.router_hop(msg[3], inst.service.name.decode(), inst.name.decode(),
                                     t, t, None)
            return
        self.stats.requests += 1
        if flags & _TRACED and telemetry.ENABLED and len(self.traced) < 10_000:
            self.traced[(peer.rid, ident)] = time.time_ns()
        mark = flags & _IDEMPOTENT
        if cmd == _STREAM_OPEN:
            mark |= _STREAM
        if isinstance(target, Service):
            svc = target
            inst = svc.policy.pick(svc.instances) if not svc.queue else None
            if inst is None:
                if not svc.instances:
                    self.stats.drop("no_such_service")
                    self._error(peer.rid, ErrorCode.NO_SUCH_SERVICE,
                                f"service {dest!r} has no instance", ident)
                elif len(svc.queue) >= svc.max_queue:
                    self.stats.drop("overloaded")
                    self._error(peer.rid, ErrorCode.OVERLOADED,
                                f"service {dest!r} has {len(svc.queue)} requests waiting", ident)
                else:
                    svc.queue.append(Queued(msg, deadline, ident, mark))
                    if not svc.has_room():
                        return
                    self._drain_queue(svc)
                return
        else:
            inst = target
            mark |= _PINNED  # addressed to this instance: another does not stand in for it
            if not inst.accepting:
                self.stats.drop("instance_draining")
                self._error(peer.rid, ErrorCode.DRAINING, "instance is draining", ident)
                return
            if len(inst.inflight) >= inst.capacity:
                self.stats.drop("overloaded")
                self._error(peer.rid, ErrorCode.OVERLOADED, "instance at capacity", ident)
                return
        self._dispatch(inst, msg, peer.rid, ident, deadline, mark)

    def _dispatch(
        self, inst: Instance, msg: list[bytes], crid: bytes, ident: int, deadline: float, mark: int
    ) -> None:
        msg[0] = inst.peer.rid
        msg[2] = crid
        # in flight from now: if it cannot be sent, router.outbound takes it back out
        inst.inflight[(crid, ident)] = (msg, deadline, mark)
        if mark & _STREAM:
            self.streams[(crid, ident)] = inst
            peer = self.peers.get(crid)
            if peer is not None:
                peer.streams.add(ident)
        self._send(msg)

    def _on_publish(self, peer: Peer, msg: list[bytes]) -> None:
        if len(msg) < 4 or len(msg[2]) > MAX_ADDRESS_BYTES:
            self._malformed(msg, "short_publish", "publish without topic and header")
            return
        topic = msg[2]
        if self.secure and not self.access.allowed(peer.session, "publish", topic):
            self._deny(peer, "publish", topic, 0)
            return
        self.proxy.publish(topic, msg[1], msg[1:])

    def _on_disconnect(self, peer: Peer, code: int) -> None:
        if code == ErrorCode.DRAINING and peer.instance is not None:
            peer.instance.accepting = False  # finish what is in flight, take nothing new
            return
        self._remove_peer(peer, "said goodbye")


    def _subscription_denied(self, identity: str | None, topic: bytes) -> None:
        for peer in self.peers.values():
            if peer.identity == identity:
                frames = error_frames(ErrorCode.FORBIDDEN, f"subscribe to {topic!r} is not allowed",
                                      0, SUB_REFUSED + topic)
                self._send([peer.rid, *frames])
