"""Calls in flight at the router: what an instance answers goes back to its client (replies,
errors, stream credit, progress), and what a client adds goes on to the instance working on
it (stream chunks, cancels).

A mixin of :class:`router.server.Router`, on its hot path: every reply passes here. Only the
instance a call was dispatched to may answer it or speak for it; whatever answers nothing in
flight is dropped and counted, but for the one answer a sender must hear although it awaits
none: an instance refusing a sealed fire-and-forget that was not sealed for its key.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from mesh import telemetry
from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd
from router.outbound import STREAM_MARK as _STREAM
from router.stats import RouterStats
from router.table import Instance, Peer, Queued, RoutingTable

_REPLY, _ERROR = Cmd.REPLY, Cmd.ERROR
_NOT_A_RECIPIENT = int(ErrorCode.NOT_A_RECIPIENT)


class InFlight:
    """Replies and what else travels with a call in flight, for :class:`router.server.Router`."""

    # provided by Router
    peers: dict[bytes, Peer]
    streams: dict[tuple[bytes, int], Instance]
    traced: dict[tuple[bytes, int], int]
    table: RoutingTable
    stats: RouterStats
    _send: Any
    _error: Any
    _malformed: Any
    _drain_queue: Any

    def _on_reply(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        inst = peer.instance
        if inst is None or len(msg) < 3:
            self._malformed(msg, "reply_from_non_instance", "reply from a peer that serves nothing")
            return
        crid = msg[2]
        entry = inst.inflight.pop((crid, ident), None)
        if entry is None:
            if msg[1][1] == _ERROR and ROUTE.unpack(msg[1])[3] == _NOT_A_RECIPIENT \
                    and crid in self.peers:
                # an instance refused a sealed fire-and-forget not sealed for its key: the
                # sender hears of it (nothing else is in flight to carry the news), under no
                # call id: an instance must not fail calls it does not serve
                version, cmd, flags, code, value, _ = ROUTE.unpack(msg[1])
                msg[1] = ROUTE.pack(version, cmd, flags, code, value, 0)
                msg[0] = crid
                msg[2] = inst.name
                self.stats.send_refusals += 1
                self._send(msg)
                return
            self.stats.drop("late_reply")
            return
        if entry[2] & _STREAM:
            self.streams.pop((crid, ident), None)
            client = self.peers.get(crid)
            if client is not None:
                client.streams.discard(ident)
        if self.traced:
            started = self.traced.pop((crid, ident), None)
            if started is not None:
                telemetry.router_hop(entry[0][3], inst.service.name.decode(),
                                     inst.name.decode(), started, time.time_ns(),
                                     None if msg[1][1] == _REPLY else "error")
        msg[0] = crid
        msg[2] = inst.name
        inst.served += 1
        self.stats.replies += 1
        self._send(msg)
        svc = inst.service
        if svc.queue:
            self._drain_queue(svc)

    def _on_stream_data(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        inst = self.streams.get((peer.rid, ident))
        if inst is None or len(msg) < 3:
            self.stats.drop("no_such_stream")
            self._error(peer.rid, ErrorCode.CANCELLED, "no such stream", ident)
            return
        self.stats.stream_chunks += 1
        msg[0] = inst.peer.rid
        msg[2] = peer.rid
        self._send(msg)

    def _on_cancel(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        """Forward a CANCEL to the instance working on the call: the address frame names it,
        or the service the call was sent to (before any word from its instance the client
        knows no more), whose instances are looked through; a call still waiting in that
        service's queue is taken out of it and never runs."""
        key = (peer.rid, ident)
        inst = self.streams.get(key)
        if inst is None and len(msg) > 2:
            target = self.table.resolve(msg[2])
            if isinstance(target, Instance):
                inst = target if key in target.inflight else None
            elif target is not None:
                inst = next((i for i in target.instances if key in i.inflight), None)
                if inst is None and _unqueue(target.queue, key):
                    self.stats.drop("cancelled_while_queued")
                    return
        if inst is None:
            self.stats.drop("cancel_unknown")
            return
        self._send([inst.peer.rid, msg[1], peer.rid, b""])

    def _on_to_client(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        """Forward a STREAM_CREDIT or PROGRESS from an instance to its client: only for a
        call that instance is working on (a stream's first credit may hand the client a
        direct path, so no instance may speak for another's stream)."""
        inst = peer.instance
        if inst is None or len(msg) < 3:
            self._malformed(msg, "credit_from_non_instance",
                            "credit or progress from a peer that serves nothing")
            return
        crid = msg[2]
        if (crid, ident) not in inst.inflight:
            self.stats.drop("credit_not_its_call")
            return
        msg[0] = crid
        msg[2] = inst.name
        self._send(msg)


def _unqueue(queue: deque[Queued], key: tuple[bytes, int]) -> bool:
    """Take the call ``key`` (client routing id, call id) out of a service's wait queue."""
    rid, ident = key
    for queued in queue:
        if queued.ident == ident and queued.frames[0] == rid:
            queue.remove(queued)
            return True
    return False
