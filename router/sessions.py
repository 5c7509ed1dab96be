"""Sessions at the router: HELLO (authenticate the connection's token, answer WELCOME) and
READY (an agent connection becomes an instance of a service it may register). Off the hot
path; a mixin of :class:`router.server.Router`, answering through ``self._send``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from mesh.errors import Error, ErrorCode
from mesh.wire import (
    MAX_ADDRESS_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Cmd,
    Flag,
    pack_route,
)
from proto import agp_pb2
from router.table import Peer

log = logging.getLogger("agp.router")
_TAKES_BATCHES = int(Flag.BATCH)  # on HELLO and WELCOME


class Sessions:
    """HELLO and READY."""

    # provided by Router
    access: Any
    stats: Any
    table: Any
    config: Any
    peers: dict[bytes, Peer]
    secure: bool
    now: float
    pub_endpoint: str
    server_keypair: tuple[bytes, bytes] | None
    _send: Any
    _error: Any
    _malformed: Any
    _deny: Any
    _remove_peer: Any
    _remove_instance: Any
    _drain_queue: Any
    # the last session number given (the router's own once it gives one): each new Peer
    # takes the next, so a client that hears another in a WELCOME of the same router knows
    # its session was lost (expired, or a connection re-made) and its calls with it
    _last_session_id: int = 0

    def _on_hello(self, msg: list[bytes], identity: str | None, ident: int) -> None:
        rid = msg[0]
        self.stats.hellos += 1
        if len(msg) < 4 or len(msg[3]) > MAX_HEADER_BYTES:
            self._error(rid, ErrorCode.MALFORMED, "HELLO needs a header", ident)
            return
        try:
            hello = agp_pb2.Hello.FromString(msg[3])
        except Exception:
            self._error(rid, ErrorCode.MALFORMED, "undecodable HELLO", ident)
            return
        if self.secure and identity is None:
            self.stats.auth_failures["no_identity"] += 1
            self._error(rid, ErrorCode.UNAUTHENTICATED, "connection is not authenticated", ident)
            return
        try:
            session = self.access.hello(identity, hello.token, hello.peer_name)
        except Error as exc:
            self.stats.auth_failures[exc.code.name.lower()] += 1
            log.warning("HELLO refused from %s: %s", identity, exc.message)
            self._error(rid, exc.code, exc.message, ident)
            return
        peer = self.peers.get(rid)
        if peer is not None and peer.identity == identity:
            peer.session = session  # a token refresh on a live connection
        else:
            if peer is not None:
                self._remove_peer(peer, "identity changed")
            peer = Peer(rid, hello.peer_name[:128], int(hello.kind), identity, session)
            # (from a random start: a router restarted under a fixed id numbers anew)
            self._last_session_id = (self._last_session_id or secrets.randbits(40)) + 1
            peer.session_id = self._last_session_id
            self.peers[rid] = peer
        peer.last_seen = self.now
        peer.batches = bool(msg[1][2] & _TAKES_BATCHES)
        welcome = agp_pb2.Welcome(
            protocol_version=PROTOCOL_VERSION,
            router_id=self.config.router_id,
            heartbeat_ms=int(self.config.heartbeat_interval * 1000),
            max_message_bytes=self.config.max_message_bytes,
            pub_endpoint=self.pub_endpoint,
            server_key=self.server_keypair[0] if self.server_keypair else b"",
            session_id=peer.session_id,  # the same on a token refresh of a live session
        )
        # the router takes batches from anyone; it says so, and sends them to who takes them
        self._send([rid, pack_route(Cmd.WELCOME, _TAKES_BATCHES, 0, 0, ident), b"",
                    welcome.SerializeToString()])

    def _on_ready(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        if len(msg) < 4 or len(msg[3]) > MAX_HEADER_BYTES:
            self._error(peer.rid, ErrorCode.MALFORMED, "READY needs a header", ident)
            return
        try:
            ready = agp_pb2.Ready.FromString(msg[3])
        except Exception:
            self._error(peer.rid, ErrorCode.MALFORMED, "undecodable READY", ident)
            return
        service = ready.service.encode()
        instance = ready.instance.encode()
        if not _valid_name(service) or not instance or b"/" in instance or len(instance) > 64:
            self._error(peer.rid, ErrorCode.MALFORMED,
                        f"bad service or instance name {ready.service!r}/{ready.instance!r}", ident)
            return
        slots = _slots(ready)
        if slots > max(1, ready.capacity):
            self._malformed(msg, "ready_free_slots", "READY offers more free slots than its "
                            f"capacity ({ready.free_slots} > {ready.capacity})", ident)
            return
        if self.secure and not self.access.allowed(peer.session, "register", service):
            self._deny(peer, "register", service, ident)
            return
        full = service + b"/" + instance
        if peer.instance is not None:
            inst = peer.instance
            if inst.name == full:  # the same READY again: slots and weight
                inst.capacity = slots
                inst.weight = max(1, ready.weight or 1)
                self._send([peer.rid, pack_route(Cmd.READY, 0, 0, 0, ident), full, b""])
                # a slot given back (a thread past its deadline returned) takes a queued
                # call now, not at the next tick
                if inst.service.queue and inst.service.has_room():
                    self._drain_queue(inst.service)
                return
            # refused before anything changes: the instance of that name stays its owner's
            self._error(peer.rid, ErrorCode.MALFORMED,
                        "one connection serves one instance", ident)
            return
        existing = self.table.instances.get(full)
        if existing is not None:  # (not this connection's: it serves nothing yet)
            if self.secure and existing.peer.identity != peer.identity:
                self._deny(peer, "register", full, ident)
                return
            self._remove_instance(existing, "replaced by a new connection")
        inst = self.table.add_instance(
            peer, service, instance,
            capacity=slots, weight=ready.weight or 1, policy=int(ready.policy),
            actions=tuple(ready.actions), public_key=ready.public_key,
            labels=dict(ready.labels), version=ready.version,
        )
        log.info("instance %s ready (capacity %d, weight %d)", full.decode(errors="replace"),
                 inst.capacity, inst.weight)
        self._send([peer.rid, pack_route(Cmd.READY, 0, 0, 0, ident), full, b""])
        if inst.service.queue:
            self._drain_queue(inst.service)


def _slots(ready: agp_pb2.Ready) -> int:
    """The calls the router may send an instance at once: its free slots when it says so
    (0: none yet; it is known, and its service's calls wait in the queue), else its
    capacity (0 or unset: 1, as before free slots were said)."""
    if ready.HasField("free_slots"):
        return ready.free_slots
    return max(1, ready.capacity)


def _valid_name(name: bytes) -> bool:
    if not name or len(name) > MAX_ADDRESS_BYTES:
        return False
    for seg in name.split(b"/"):
        if not seg or not all(c in _NAME_CHARS for c in seg):
            return False
    return True


_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
