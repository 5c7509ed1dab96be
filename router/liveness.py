"""The router's clock: heartbeats, liveness, deadlines of queued requests, and what happens
to a peer's work when it dies or leaves.

Every ``tick`` the router heartbeats its peers, drops the ones silent for ``liveness``
(their in-flight requests are answered UNAVAILABLE, or re-dispatched when idempotent),
ends a session whose credentials expired, answers DEADLINE_EXCEEDED to queued requests
whose deadline passed, and hands queued requests to instances with room. A mixin of
:class:`router.server.Router`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from mesh.errors import ErrorCode
from mesh.wire import HEARTBEAT_FRAME, ROUTE, Cmd, Flag, pack_route
from router.outbound import PINNED_MARK, STREAM_MARK
from router.table import Instance, Peer, Queued, Service

log = logging.getLogger("agp.router")

_STREAM = STREAM_MARK
_IDEMPOTENT = int(Flag.IDEMPOTENT)  # kept in an in-flight entry's mark
_IN_FLIGHT = frozenset({int(Cmd.REQUEST), int(Cmd.STREAM_OPEN)})
TRACE_KEEP_NS = 600 * 10**9  # a router hop span is not worth more than ten minutes' memory


class Liveness:
    """Heartbeats, deaths and queues."""

    # provided by Router
    config: Any
    stats: Any
    table: Any
    access: Any
    proxy: Any
    secure: bool
    now: float
    peers: dict[bytes, Peer]
    streams: dict[tuple[bytes, int], Instance]
    _next_heartbeat: float
    traced: dict[tuple[bytes, int], int]  # (client, call) -> start (ns) of a traced call
    outbox: Any
    _flush_peer: Any
    _send: Any
    _error: Any
    _dispatch: Any

    def _drain_queue(self, svc: Service) -> None:
        """Hand queued calls to instances with room, in order. A call whose caller left
        while it waited (a client closes without cancelling) is dropped, not worked on for
        no one; one whose deadline passed is answered; neither takes a balancer's turn."""
        queue = svc.queue
        now = self.now
        peers = self.peers
        while queue:
            q = queue[0]
            crid = q.frames[0]  # queued frames keep the client's routing id in front
            if crid not in peers:
                queue.popleft()
                self.stats.drop("caller_gone")
                continue
            if q.deadline <= now:
                queue.popleft()
                self.stats.drop("deadline_in_queue")
                self._error(crid, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued",
                            q.ident)
                continue
            inst = svc.policy.pick(svc.instances)
            if inst is None:
                return
            queue.popleft()
            remaining = max(1, int((q.deadline - now) * 1000))
            _, cmd, flags, _, _, ident = ROUTE.unpack(q.frames[1])
            q.frames[1] = pack_route(cmd, flags, 0, remaining, ident)
            self._dispatch(inst, q.frames, crid, q.ident, q.deadline, q.idempotent)

    def _housekeeping(self, now: float) -> None:
        self.now = now
        cfg = self.config
        dead_before = now - cfg.liveness
        beat = now >= self._next_heartbeat
        if beat:
            self._next_heartbeat = now + cfg.heartbeat_interval
        for peer in list(self.peers.values()):
            if peer.last_seen < dead_before:
                self._remove_peer(peer, f"silent for {now - peer.last_seen:.1f}s")
            elif self.secure and self.access.expired(peer.session, time.time()):
                self._error(peer.rid, ErrorCode.UNAUTHENTICATED, "credentials expired or revoked")
                self._flush_peer(peer.rid)  # it hears why before its session goes
                if peer.rid in self.peers:
                    self._remove_peer(peer, "credentials expired or revoked")
            elif beat:
                self._send([peer.rid, HEARTBEAT_FRAME])
        for svc in list(self.table.services.values()):
            queue = svc.queue
            # every call whose deadline passed, wherever it waits: deadlines differ per call
            # and retries go back in front, so the queue is not in deadline order
            if queue and any(q.deadline <= now for q in queue):
                svc.queue = deque(q for q in queue if q.deadline > now)
                for q in queue:
                    if q.deadline <= now:
                        self.stats.drop("deadline_in_queue")
                        self._error(q.frames[0], ErrorCode.DEADLINE_EXCEEDED,
                                    "deadline passed while queued", q.ident)
            if svc.queue and svc.has_room():
                self._drain_queue(svc)
            self.table.forget_if_empty(svc)
        if beat and self.traced:
            self._forget_old_traces()
        if beat:
            self.proxy.beacon()
        if beat and self.secure:
            self.access.refresh()

    def _forget_old_traces(self) -> None:
        """A traced call that ended without a reply through here (refused, timed out,
        cancelled, its instance gone) leaves its start behind: forgotten after
        TRACE_KEEP_S, so the table (bounded) never fills and tracing never stops."""
        oldest = time.time_ns() - TRACE_KEEP_NS
        for key in [k for k, started in self.traced.items() if started < oldest]:
            del self.traced[key]

    def _remove_peer(self, peer: Peer, why: str) -> None:
        self.peers.pop(peer.rid, None)
        # what waited for the next flush to it goes nowhere: its requests are in flight and
        # settled with its instance below; anything else is counted
        for msg in self.outbox.take(peer.rid):
            if msg[1][1] not in _IN_FLIGHT:
                self.stats.drop("peer_gone")
        if peer.instance is not None:
            self._remove_instance(peer.instance, why)
        for sid in peer.streams:
            inst = self.streams.pop((peer.rid, sid), None)
            if inst is not None:
                entry = inst.inflight.pop((peer.rid, sid), None)
                if entry is not None:
                    self._send([inst.peer.rid, pack_route(Cmd.CANCEL, 0, 0, 0, sid), peer.rid, b""])
        peer.streams.clear()
        self._forget_calls_of(peer.rid)
        log.info("peer %s removed: %s", peer.name, why)

    def _forget_calls_of(self, rid: bytes) -> None:
        """A forgotten client's calls are no one's: each at an instance is cancelled there
        (a scan: removals are rare, the hot path pays nothing), its entry kept, for the
        slot is the agent's until it answers (a pool thread may run on) and that answer
        frees it; each still queued is taken out and never runs. Both counted."""
        cancels = [(inst, key[1]) for inst in self.table.instances.values()
                   for key, entry in inst.inflight.items()
                   if key[0] == rid and not entry[2] & _STREAM]
        for inst, ident in cancels:
            # (a CANCEL that cannot go removes its instance, whose calls are then settled)
            if (rid, ident) in inst.inflight:
                self.stats.drop("client_gone")
                self._send([inst.peer.rid, pack_route(Cmd.CANCEL, 0, 0, 0, ident), rid, b""])
        for svc in list(self.table.services.values()):
            queue = svc.queue  # changed in place: a drain up the stack may be looping on it
            kept = [q for q in queue if q.frames[0] != rid]
            if len(kept) != len(queue):
                # (the reason _drain_queue counts one under: the same call, taken out sooner)
                self.stats.drop("caller_gone", len(queue) - len(kept))
                queue.clear()
                queue.extend(kept)
                self.table.forget_if_empty(svc)

    def _remove_instance(self, inst: Instance, why: str) -> None:
        self.table.remove_instance(inst)
        log.warning("instance %s removed: %s", inst.name.decode(errors="replace"), why)
        svc = inst.service
        retry: list[Queued] = []
        # taken out first: an error below may fail to send and remove its client, which
        # takes that client's streams out of inst.inflight while this loops
        calls = list(inst.inflight.items())
        inst.inflight.clear()
        for (crid, ident), (frames, deadline, mark) in calls:
            if mark & _STREAM:
                self.streams.pop((crid, ident), None)
                client = self.peers.get(crid)
                if client is not None:
                    client.streams.discard(ident)
            if (mark & _IDEMPOTENT and not mark & (_STREAM | PINNED_MARK)
                    and deadline > self.now and svc.instances):
                frames[0] = crid
                retry.append(Queued(frames, deadline, ident, mark))
            else:
                self.stats.drop("instance_died")
                self._error(crid, ErrorCode.UNAVAILABLE,
                            f"instance {inst.name.decode(errors='replace')} went away ({why})",
                            ident, address=inst.name)
        if retry:
            svc.queue.extendleft(reversed(retry))
            if svc.name not in self.table.services:
                self.table.services[svc.name] = svc
            self._drain_queue(svc)
