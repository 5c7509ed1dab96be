"""The asyncio face of the mesh client: ``async with await AsyncMesh.connect() as m``.

Requests carry a deadline, retry with exponential backoff and jitter when that is safe
(the request is idempotent, has an idempotency key, or was refused before it reached an
agent), and pass through a per-destination circuit breaker. Mixins hold the rest:
``send`` (``mesh.sends``), ``request_nowait`` (``mesh.nowait``), end-to-end sealing
(``mesh.sealing``).
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import zmq

from mesh import codec, metrics, telemetry
from mesh.backoff import Backoff
from mesh.breaker import CircuitBreaker
from mesh.breaker import State as BreakerState
from mesh.core import Core, Security, flags_for
from mesh.errors import (
    MAYBE_RAN,
    NEVER_DISPATCHED,
    Closed,
    ConfigError,
    DeadlineExceeded,
    Error,
)
from mesh.nowait import NowaitRequests
from mesh.pubsub import Message, Subscription
from mesh.replies import decode_reply, open_sealed_reply
from mesh.sealing import NEVER_SEALED, Sealing, payload_boxes
from mesh.sends import FireAndForget
from mesh.service_keys import ServiceKeys
from mesh.stream import AsyncStream
from mesh.wire import MAX_ADDRESS_BYTES, Cmd, Flag
from proto import agp_pb2

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7700"


def resolve_endpoint(endpoint: str | None) -> str:
    """The router endpoint: argument, then AGP_ROUTER, then the local default."""
    if endpoint:
        return endpoint
    return os.environ.get("AGP_ROUTER", DEFAULT_ENDPOINT)


async def _find_on_lan(security: Security | None) -> str | None:
    """A router announced over mDNS whose key is the one this client trusts (its pinned
    router key); None when mDNS is off or nothing trusted answers within 2 s."""
    from discovery.mdns import async_find_router, mdns_enabled

    if not mdns_enabled():
        return None
    pinned = security.server_public if security is not None else None
    if pinned is None:
        return None  # an insecure client has no key to check an announcement against
    info = await async_find_router(2.0, pinned_key=pinned,
                                   mesh=os.environ.get("AGP_MESH", "default"))
    return info.endpoint if info is not None else None


_ENCRYPTED, _IDEMPOTENT = int(Flag.ENCRYPTED), int(Flag.IDEMPOTENT)
MAX_BREAKERS = 1024  # destinations with a breaker kept (and exported) per client


def _evict_breaker(breakers: OrderedDict[bytes, CircuitBreaker]) -> None:
    """Make room for one: the least recently used closed breaker, else (all open or
    half-open, twice the bound) the least recently used of any."""
    for key, b in breakers.items():
        if b.state is BreakerState.CLOSED:
            del breakers[key]
            return
    if len(breakers) >= 2 * MAX_BREAKERS:
        breakers.popitem(last=False)


class AsyncMesh(FireAndForget, NowaitRequests, Sealing):
    """A connected mesh client on the running asyncio loop."""

    _never_sealed = NEVER_SEALED

    def __init__(self, core: Core, *, breakers: bool = True, e2e: Any = None) -> None:
        self.core = core
        self.e2e = e2e  # security.payload.PayloadBoxes when payloads are sealed end to end
        self.service_keys = ServiceKeys(self._loop, self._registry_lookup)  # what e2e seals for
        core.on_send_refused = self.service_keys.forget  # stale keys: the next call asks again
        self._headers: dict[str, bytes] = {}
        self._sealed_headers: dict[str, bytes] = {}  # action -> Envelope(action, sender_key)
        self._breakers: OrderedDict[bytes, CircuitBreaker] | None = (
            OrderedDict() if breakers else None)

    @classmethod
    async def connect(
        cls,
        endpoint: str | None = None,
        *,
        name: str = "",
        timeout: float = 10.0,
        security: Security | None = None,
        context: zmq.Context[Any] | None = None,
        breakers: bool = True,
        kind: int = agp_pb2.CLIENT,
        hwm: int = 100_000,
        sub_queue: int = 100_000,
        identity: str | None = None,
        e2e: bool | None = None,
    ) -> AsyncMesh:
        """Connect to the router and wait for its WELCOME (Unavailable after ``timeout``).

        ``hwm`` bounds each socket's queue (messages); ``sub_queue`` bounds each
        subscription's queue: past it the oldest messages are dropped and counted.
        """
        identity = identity or os.environ.get("AGP_IDENTITY") or None
        if security is None and identity:
            from security.home import client_security

            security = client_security(identity)  # type: ignore[assignment]
        if not endpoint and not os.environ.get("AGP_ROUTER"):
            endpoint = await _find_on_lan(security)
        telemetry.ensure_tracing(name or identity or "agp-client")
        core = Core(resolve_endpoint(endpoint), name=name or identity or "", security=security,
                    context=context,
                    kind=kind, hwm=hwm, sub_queue=sub_queue)
        await core.start(timeout)
        try:
            boxes = payload_boxes(security, e2e)
        except ConfigError:
            await core.close()
            raise
        mesh = cls(core, breakers=breakers, e2e=boxes)
        if boxes is not None:  # pub/sub too: batches sealed with per-topic keys
            from security.topic_key_client import TopicKeyClient

            core.subs.crypto = TopicKeyClient(mesh)
        if metrics.CLIENT is not None:  # its drops count from the start, requests or not
            metrics.CLIENT.track(mesh)
        return mesh

    async def __aenter__(self) -> AsyncMesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        crypto = self.core.subs.crypto
        if crypto is not None:
            await asyncio.gather(*crypto.close(), return_exceptions=True)
        await self.core.close()

    # ------------------------------------------------------------------ helpers
    def _header(self, action: str, idempotency_key: str | None = None,
                traceparent: str | None = None) -> bytes:
        if idempotency_key is None and traceparent is None:
            h = self._headers.get(action)
            if h is None:
                h = agp_pb2.Envelope(action=action).SerializeToString()
                if len(self._headers) < 1024:
                    self._headers[action] = h
            return h
        env = agp_pb2.Envelope(action=action, idempotency_key=idempotency_key or "",
                               traceparent=traceparent or "")
        return env.SerializeToString()

    @staticmethod
    def _address(name: str) -> bytes:
        b = name.encode()
        if not b or len(b) > MAX_ADDRESS_BYTES:
            raise ConfigError(f"bad destination {name!r}")
        return b

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The core's loop, the one these coroutines run on. Not asyncio.get_running_loop():
        CPython 3.11 makes a getpid() system call in it every time, microseconds on a VM."""
        loop = self.core.loop
        assert loop is not None, "the core is started before its AsyncMesh exists"
        return loop

    def breaker(self, dest: str) -> CircuitBreaker | None:
        """This destination's breaker, most recently used last; past ``MAX_BREAKERS`` the
        least recently used closed one goes (an open or half-open one only past twice that:
        its state is what protects the caller)."""
        breakers = self._breakers
        if breakers is None:
            return None
        key = dest.encode()
        b = breakers.get(key)
        if b is not None:
            breakers.move_to_end(key)
            return b
        if len(breakers) >= MAX_BREAKERS:
            _evict_breaker(breakers)
        b = breakers[key] = CircuitBreaker(dest)
        return b

    # ------------------------------------------------------------------ request-response
    def request(self, dest: str, action: str, data: Any = None, **kwargs: Any
                ) -> Coroutine[Any, Any, Any]:
        """Call ``action`` on a service (balanced) or an instance; return the decoded reply.

        Keywords: ``timeout`` (the whole budget, default 10 s), ``retries``, ``backoff``,
        ``idempotent``, ``idempotency_key``, ``raw``, ``traceparent``, ``on_progress``.
        Retries happen only when safe: the error came before any agent ran it, or the call
        is ``idempotent`` / has an ``idempotency_key``. Traced and counted when
        ``mesh.telemetry`` / ``mesh.metrics`` are on.
        """
        # a plain function handing back the coroutine: no extra await layer on the hot path
        if telemetry.ENABLED or metrics.CLIENT is not None:
            return telemetry.observed_request(self, dest, action, data, kwargs)
        return self._request(dest, action, data, **kwargs)

    async def _request(
        self,
        dest: str,
        action: str,
        data: Any = None,
        *,
        timeout: float = 10.0,
        retries: int = 0,
        backoff: Backoff | None = None,
        idempotent: bool = False,
        idempotency_key: str | None = None,
        raw: bool = False,
        traceparent: str | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> Any:
        """Call ``action`` on a service (balanced) or an instance; return the decoded reply.

        ``timeout`` is the whole budget. Retries happen only when safe: the error came
        before any agent ran it, or the call is ``idempotent`` / has an ``idempotency_key``.
        """
        address = self._address(dest)
        payload: list[Any] = [data] if raw else codec.encode(data)
        boxes = None if dest in NEVER_SEALED else self.e2e  # sealing, when end to end
        header = self._header(action, idempotency_key, traceparent) if boxes is None else b""
        flags = flags_for(raw, idempotent or idempotency_key is not None)
        if traceparent:
            flags |= telemetry.route_flags(traceparent)  # the router records a hop span
        stats = metrics.CLIENT
        if stats is not None:
            stats.sent("request", metrics.payload_bytes(payload))
        breaker = self.breaker(dest)
        loop = self._loop()
        deadline = loop.time() + timeout
        attempt = 0
        rekeyed = False
        progress_cb = None
        if on_progress is not None:
            def progress_cb(_instance: bytes, msg: list[bytes]) -> None:
                report = codec.decode(msg[3:]) if len(msg) > 3 else {}
                on_progress(float(report.get("fraction", 0.0)), str(report.get("message", "")))
        ticket = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            if breaker is not None:
                # handed back with this attempt's outcome, which comes within ``remaining``
                ticket = breaker.before_call(remaining)
            try:  # every way out from here reports to the breaker (a half-open trial slot)
                if remaining <= 0:
                    raise DeadlineExceeded(f"{dest} {action}: no reply within {timeout:g}s")
                waiter = loop.create_future()
                ident = self.core.next_id()
                send_header, send_payload, send_flags = header, payload, flags
                reply_key: Any = None
                if boxes is not None:
                    # the usual case is cached, without awaiting a coroutine
                    keys = self.service_keys
                    recipients = keys.fresh(dest) or await keys.get(dest)
                    send_header, send_payload, reply_key = self._seal(
                        recipients, action, ident, payload, idempotency_key, traceparent)
                    send_flags = flags | _ENCRYPTED
                self.core.start_request(Cmd.REQUEST, address, send_header, send_payload,
                                        waiter, flags=send_flags, timeout=remaining,
                                        on_progress=progress_cb, ident=ident)
            except BaseException:
                if breaker is not None:
                    breaker.abandon(ticket)  # not sent: no outcome will come for this trial
                raise
            try:
                msg = await waiter
            except asyncio.CancelledError:
                self.core.cancel_request(ident)
                if breaker is not None:
                    breaker.abandon(ticket)
                raise
            except Error as exc:
                if boxes is not None and not rekeyed and self.service_keys.refused(dest, exc):
                    # sealed for a list of keys older than the instance the router picked:
                    # its handler did not run; send once more for the keys looked up anew
                    rekeyed = True
                    if breaker is not None:
                        breaker.abandon(ticket)
                    attempt -= 1
                    continue
                if breaker is not None:
                    breaker.record(exc, ticket)
                safe = isinstance(exc, NEVER_DISPATCHED) or (
                    isinstance(exc, MAYBE_RAN) and flags & _IDEMPOTENT)
                if not safe or attempt > retries:
                    raise
                backoff = backoff or Backoff()  # made only when a retry happens
                delay = min(backoff.delay(attempt), max(0.0, deadline - loop.time()))
                await self.core.pause(delay)  # Closed at once if the client closes meanwhile
                continue
            if breaker is not None:
                breaker.on_success(ticket)
            if stats is not None:
                stats.bytes_received += metrics.payload_bytes(msg[3:])
            if boxes is not None:
                return open_sealed_reply(msg, reply_key, ident)
            return decode_reply(msg)

    # ------------------------------------------------------------------ pub/sub
    def publish(self, topic: str, data: Any, *, raw: bool = False) -> None:
        """Publish without blocking; bursts are batched under the hood, order kept."""
        t = topic.encode()
        if not t or len(t) > MAX_ADDRESS_BYTES:
            raise ConfigError(f"bad topic {topic!r}")
        if raw:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ConfigError("raw=True publishes bytes")
            data = bytes(data)
            self.core.subs.publish(t, data, True)
            if metrics.CLIENT is not None:
                metrics.CLIENT.sent("publish", len(data))
            return
        frames = codec.encode(data)
        if len(frames) == 1:
            self.core.subs.publish(t, frames[0], False)
        else:
            self.core.subs.publish_frames(t, frames, 0)
        if metrics.CLIENT is not None:
            metrics.CLIENT.sent("publish", metrics.payload_bytes(frames))

    async def flush(self, *, wait: bool = False, timeout: float = 30.0) -> None:
        """Send every publish made so far; with ``wait``, return once the router has taken
        them all (a ping on the same ordered connection acts as a barrier)."""
        self.core.subs.flush()
        crypto = self.core.subs.crypto
        if crypto is not None:  # batches waiting for their topic key leave (or are counted)
            await crypto.settle(timeout)
            self.core.subs.flush()
        if wait:  # the router's own ping carries no payload: never sealed, not counted
            await self._barrier(timeout)

    async def _barrier(self, timeout: float) -> None:
        """A ping to the router, behind every message sent so far (one ordered connection);
        not a user's request: no breaker, no count."""
        waiter = self._loop().create_future()
        ident = self.core.start_request(Cmd.REQUEST, b"agp/router", self._header("ping"),
                                        codec.encode(None), waiter, timeout=timeout)
        try:
            decode_reply(await waiter)
        except asyncio.CancelledError:
            self.core.cancel_request(ident)
            raise

    async def subscribe(
        self,
        prefix: str,
        callback: Callable[[Message], Any] | None = None,
        *,
        raw: bool = False,
        timeout: float = 10.0,
    ) -> Subscription:
        """Subscribe to topics starting with ``prefix``; returns once the router confirmed."""
        if self.core.closed:
            raise Closed("client closed")
        sub = await self.core.subs.subscribe(prefix.encode(), callback, raw, timeout)
        if self.core.subs.crypto is not None:  # an exact topic: its key before its messages
            try:
                await self.core.subs.crypto.prefetch(prefix)
            except BaseException:  # (cancelled) the caller never gets ``sub`` to close
                sub.close()
                raise
        return sub

    # ------------------------------------------------------------------ streaming
    def stream(self, dest: str, action: str, params: Any = None, *,
               timeout: float = 600.0, direct: bool | None = None) -> AsyncStream:
        """Open a credit-controlled stream to a service: ``async with m.stream(...) as s``.

        ``direct`` (default: on unless ``AGP_DIRECT_STREAMS=0``) lets the chunks go peer to
        peer when the agent offers it; the open, result and errors still go via the router.
        """
        if direct is None:
            direct = os.environ.get("AGP_DIRECT_STREAMS", "1") not in ("0", "")
        return AsyncStream(self, dest, action, params, timeout, direct=direct)
