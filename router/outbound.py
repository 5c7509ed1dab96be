"""Everything the router sends, and what becomes of a message that cannot go.

Messages to a peer that takes batches wait in an :class:`~mesh.batch.Outbox` until the loop
flushes (after every burst it drains, at most ``FLUSH_EVERY`` messages apart), then leave as
one BATCH per peer: under load one frame carries tens of messages, and libzmq's I/O thread
boxes and writes one frame instead of a hundred. A large message, or one to a peer that takes
no batches, goes at once, after whatever was waiting for that peer.

A message that cannot be sent (the peer's queue is full, or its connection is gone) is
never dropped silently: a request is answered OVERLOADED or sent to another instance, a
fire-and-forget is answered OVERLOADED, and anything else is counted in ``stats.drops`` by
the reason its command gives. A mixin of :class:`router.server.Router`.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import zmq

from mesh import batch
from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd, error_frames
from mesh.zmqio import send_frames
from router.table import Instance, Peer, Queued, Service

log = logging.getLogger("agp.router")

FLUSH_EVERY: Final = 64  # messages handled between two flushes while a burst drains
STREAM_MARK: Final = 0x100  # marks an in-flight entry that is a stream, beside the Flag bits
PINNED_MARK: Final = 0x200  # ... that was addressed to one instance: no other may serve it
_REQUEST, _SEND, _STREAM_OPEN = Cmd.REQUEST, Cmd.SEND, Cmd.STREAM_OPEN
_UNSENT_REASON: Final = {
    Cmd.REPLY: "reply_unroutable", Cmd.ERROR: "error_unroutable",
    Cmd.STREAM_DATA: "stream_unroutable", Cmd.STREAM_END: "stream_unroutable",
    Cmd.STREAM_CREDIT: "credit_unroutable", Cmd.PROGRESS: "credit_unroutable",
    Cmd.CANCEL: "cancel_unroutable", Cmd.HEARTBEAT: "heartbeat_unroutable",
    Cmd.WELCOME: "session_unroutable", Cmd.READY: "session_unroutable",
    Cmd.DISCONNECT: "disconnect_unroutable",
}


class Outbound:
    """Sending, batching, and the fate of what could not be sent."""

    # provided by Router
    sock: zmq.Socket[Any]
    stats: Any
    table: Any
    peers: dict[bytes, Peer]
    streams: dict[tuple[bytes, int], Instance]
    outbox: batch.Outbox
    _remove_peer: Any
    _drain_queue: Any

    def _send(self, frames: list[Any]) -> bool:
        """Send (or queue for the next flush) ``frames``, whose first is the peer's routing
        id. False when it could not go now; its fate is then already settled."""
        rid = frames[0]
        peer = self.peers.get(rid)
        if peer is not None and peer.batches:
            size = batch.batchable(frames, 1)
            if size >= 0:
                if self.outbox.add(rid, frames, size):
                    self._flush_peer(rid)
                return True
        if self.outbox.holds(rid):
            self._flush_peer(rid)  # what waited goes first
        try:
            send_frames(self.sock, frames)
            return True
        except zmq.Again:
            self._unsent([frames], unreachable=False)
        except zmq.ZMQError:  # EHOSTUNREACH: gone (ROUTER_MANDATORY)
            self._unsent([frames], unreachable=True)
        return False

    def _flush(self) -> None:
        """Send everything waiting, one message or one BATCH per peer. What failing sends
        queue in turn (errors to clients, requests for other instances) goes too."""
        outbox = self.outbox
        for _ in range(8):  # each round is caused by failures of the one before: bounded
            if not outbox:
                return
            for rid, messages in outbox.take_all():
                self._send_wire(rid, messages)

    def _flush_peer(self, rid: bytes) -> None:
        self._send_wire(rid, self.outbox.take(rid))

    def _send_wire(self, rid: bytes, messages: list[list[Any]]) -> None:
        if not messages:
            return
        n = len(messages)
        if n > 1:
            self.stats.batches_out += 1
            self.stats.batched_out += n
        try:
            send_frames(self.sock, batch.wire(messages, 1))
        except zmq.Again:
            self._unsent(messages, unreachable=False)
        except zmq.ZMQError:
            self._unsent(messages, unreachable=True)

    # ------------------------------------------------------------------ what could not go
    def _unsent(self, messages: list[list[Any]], *, unreachable: bool) -> None:
        """Settle messages to one peer that were not sent: its queue was full, or (when
        ``unreachable``) its connection is gone."""
        rid = messages[0][0]  # before _request_unsent turns requests back to their clients
        retry: list[tuple[Service, Queued]] = []
        for msg in messages:
            cmd = msg[1][1]
            if cmd == _REQUEST or cmd == _STREAM_OPEN:
                self._request_unsent(msg, unreachable, retry)
            elif cmd == _SEND:
                self.stats.drop("send_unroutable")
                self._error(msg[2], ErrorCode.UNAVAILABLE if unreachable else
                            ErrorCode.OVERLOADED, "instance unreachable" if unreachable else
                            "instance queue full", ROUTE.unpack(msg[1])[5])
            else:
                self.stats.drop(_UNSENT_REASON.get(cmd, "unroutable"))
        if not unreachable:
            return
        peer = self.peers.get(rid)
        if peer is not None:
            self._remove_peer(peer, "connection gone")
        # never delivered, so safe on another instance, idempotent or not; in their order
        for svc, q in reversed(retry):
            if svc.instances and svc.name in self.table.services \
                    and not q.idempotent & PINNED_MARK:
                svc.queue.appendleft(q)
            else:
                self.stats.drop("instance_unroutable")
                self._error(q.frames[0], ErrorCode.UNAVAILABLE, "instance unreachable",
                            q.ident)
        for svc in {id(svc): svc for svc, _ in retry}.values():
            if svc.queue:
                self._drain_queue(svc)

    def _request_unsent(self, msg: list[Any], unreachable: bool,
                        retry: list[tuple[Service, Queued]]) -> None:
        peer = self.peers.get(msg[0])
        inst = peer.instance if peer is not None else None
        crid = msg[2]
        ident = ROUTE.unpack(msg[1])[5]
        entry = inst.inflight.pop((crid, ident), None) if inst is not None else None
        if inst is None or entry is None:
            self.stats.drop("request_unroutable")  # its instance is already gone
            return
        _, deadline, mark = entry
        if mark & STREAM_MARK:
            self.streams.pop((crid, ident), None)
            client = self.peers.get(crid)
            if client is not None:
                client.streams.discard(ident)
        msg[0] = crid  # queued and refused messages keep the client's routing id in front
        if unreachable:
            retry.append((inst.service, Queued(msg, deadline, ident, mark)))
            return
        self.stats.drop("instance_queue_full")
        self._error(crid, ErrorCode.OVERLOADED, "instance queue full", ident)

    # ------------------------------------------------------------------ answers of its own
    def _error(self, rid: bytes, code: ErrorCode, message: str, ident: int = 0,
               address: bytes = b"") -> None:
        self.stats.errors_sent += 1
        self._send([rid, *error_frames(code, message, ident, address)])

    def _malformed(self, msg: list[bytes], reason: str, why: str, ident: int = 0) -> None:
        """Refuse a malformed message: counted by ``reason``, and its sender (a peer) told
        ``why``; ``ident`` names the sender's own call (a request), which then ends with the
        error instead of its deadline (an answer's id names another's call: never given)."""
        self.stats.refuse(reason)
        if msg and msg[0] in self.peers:
            self._error(msg[0], ErrorCode.MALFORMED, why, ident)

    def _deny(self, peer: Peer, action: str, name: bytes, ident: int) -> None:
        self.stats.denials[action] += 1
        log.warning("denied: %s may not %s %r", peer.name, action, name)
        self._error(peer.rid, ErrorCode.FORBIDDEN, f"{action} on {name!r} is not allowed", ident)
