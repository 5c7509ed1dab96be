"""Access tokens of a client's session: fetched, refreshed before they expire, asked again
of a provider when the router refuses one, and retried with a growing wait when a fetch
fails (for :class:`mesh.core.Core`, beside :class:`mesh.session.SessionSide`).

Why a wait: a client whose fetch fails (the auth service down, the key not bound to any
OAuth2 client, a provider's token refused) must try again, or it sits on a token-less
session for ever; trying at every tick would hammer the auth service. Why the ``exp``: a
provider's token may live for less than the 300 s once assumed, and would expire before its
refresh; the client reads ``exp`` to schedule the refresh, without verifying it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import Any

from mesh.backoff import Backoff
from mesh.errors import Error, Malformed
from mesh.wire import Cmd
from proto import agp_pb2

log = logging.getLogger("agp.client")

AUTH_SERVICE = b"agp/system/auth"

DEFAULT_TOKEN_LIFETIME = 300.0  # a provider's token that is not a JWT with an exp
MIN_TOKEN_LIFETIME = 1.0  # refreshes of a token about to expire come no closer than 0.8 s
TOKEN_RETRY_MIN = 0.5  # after a failed fetch, or a refused token: the first wait (s) ...
TOKEN_RETRY_MAX = 30.0  # ... doubling up to this, each with jitter (never a hot loop)
_RETRY = Backoff(base=TOKEN_RETRY_MIN, cap=TOKEN_RETRY_MAX, jitter=False)  # jittered here
NOTHING_NEWER_MIN = 0.25  # a provider with nothing newer is asked again no sooner (s)


def token_lifetime(token: str, fallback: float) -> float:
    """Seconds ``token`` has left by its ``exp``, else ``fallback``. Read, not verified:
    the client cannot verify a token, it only schedules its refresh by it."""
    from security.jwt import decode_unverified

    try:
        _, claims = decode_unverified(token)
    except Error:  # not a JWT (an opaque token): the router judges it
        return fallback
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return fallback
    return max(MIN_TOKEN_LIFETIME, float(exp) - time.time())


class TokenSide:
    """Getting and keeping the session's access token."""

    # provided by Core / SessionSide
    loop: asyncio.AbstractEventLoop | None
    security: Any
    connected: bool
    _started: bool
    _refreshing: bool
    _token_refused: bool
    _token_attempts: int
    _token_retry_at: float
    _hello_waiters: list[asyncio.Future[None]]
    start_request: Any
    _send_hello: Any
    _count: Any

    async def _acquire_token(self) -> bool:
        """Get an access token (provider, or the mesh's auth service) and present it; False
        when (a refresh) the provider has nothing newer: presenting it again would change
        nothing, and a provider renewing lazily (near its ``exp``) is not failing."""
        sec = self.security
        assert sec is not None
        assert self.loop is not None
        if sec.token_provider is not None:
            token = sec.token_provider()
            if self._started and token and token == sec.token:
                return False
            self._take_token(token, token_lifetime(token, DEFAULT_TOKEN_LIFETIME))
        else:
            waiter = self.loop.create_future()
            self.start_request(Cmd.REQUEST, AUTH_SERVICE,
                               agp_pb2.Envelope(action="token").SerializeToString(), [],
                               waiter, timeout=10.0)
            from mesh import codec

            msg = await waiter
            body = codec.decode(msg[3:])
            try:
                token = str(body["access_token"])
                lifetime = float(body.get("expires_in", DEFAULT_TOKEN_LIFETIME))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise Malformed("the auth service answered without a token") from None
            if not token or not math.isfinite(lifetime):
                raise Malformed("the auth service answered without a token")
            # (relative: no clock of the router's is trusted here)
            self._take_token(token, max(MIN_TOKEN_LIFETIME, lifetime))
        welcome = self.loop.create_future()
        self._hello_waiters.append(welcome)
        self._send_hello()
        await welcome
        self._refreshing = False
        return True

    def _take_token(self, token: str, lifetime: float) -> None:
        sec = self.security
        assert sec is not None
        assert self.loop is not None
        sec.token = token
        sec.token_lifetime = lifetime
        sec.token_expires = self.loop.time() + lifetime

    def _fetch_token(self) -> None:
        """Fetch (or refresh) the token in a task, unless one runs or a failed one's wait
        is not over: every failure (refused, timed out, no token) is retried by ``_tick``."""
        assert self.loop is not None
        if self._refreshing or self.loop.time() < self._token_retry_at:
            return
        self._refreshing = True
        self.loop.create_task(self._acquire_token()).add_done_callback(self._token_fetched)

    def _token_fetched(self, task: asyncio.Task[bool]) -> None:
        self._refreshing = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            if task.result():
                self._token_attempts = 0
            else:
                self._nothing_newer()
            return
        self._count("token_failures")
        delay = self._token_backoff()
        log.warning("getting an access token failed (next try in %.1fs): %s", delay, exc)

    def _token_backoff(self) -> float:
        """Push the next token attempt back: 0.5 s, then doubling up to 30 s, jittered."""
        assert self.loop is not None
        self._token_attempts += 1
        ceiling = _RETRY.delay(min(self._token_attempts, 17))  # doubling, capped
        delay = ceiling * random.uniform(0.5, 1.0)
        self._token_retry_at = self.loop.time() + delay
        return delay

    def _nothing_newer(self) -> None:
        """The provider gave the token it gave before: ask again later, not counted as a
        failure, and no later than halfway to its ``exp`` (a growing wait could pass it,
        and the router's leeway too, and the session would be dropped)."""
        sec = self.security
        assert sec is not None
        assert self.loop is not None
        now = self.loop.time()
        self._token_backoff()  # the provider is not asked at every tick ...
        left = sec.token_expires - now
        if left > 0:  # ... but again before its token expires
            delay = min(self._token_retry_at - now, max(NOTHING_NEWER_MIN, left / 2))
            self._token_retry_at = now + delay
        log.debug("the token provider has no newer token yet (next ask in %.1fs)",
                  self._token_retry_at - now)

    def _ask_provider_again(self) -> None:
        """The router refused the provider's token (expired, revoked): the next HELLO
        presents a new one, asked of the provider at most once per backoff."""
        sec = self.security
        assert sec is not None
        assert sec.token_provider is not None
        assert self.loop is not None
        if self.loop.time() < self._token_retry_at:
            return  # the refused one goes again: the router answers it at once
        self._token_refused = False
        self._token_backoff()  # reset by a WELCOME to a token
        try:
            token = sec.token_provider()
        except Exception as exc:  # the caller's code: it may fail, the session lives on
            self._token_refused = True
            self._count("token_failures")
            log.warning("the token provider failed: %s", exc)
            return
        self._take_token(token, token_lifetime(token, DEFAULT_TOKEN_LIFETIME))

    def _maybe_refresh(self, now: float) -> None:
        """Each tick: refresh a token at 80% of its lifetime; a client of the mesh's auth
        service left without one (its fetch failed) tries again once its wait is over."""
        sec = self.security
        if (sec is None or self._refreshing or not self.connected or not self._started
                or now < self._token_retry_at):
            return
        if sec.token:
            if now < sec.token_expires - 0.2 * sec.token_lifetime:
                return
        elif sec.token_provider is not None:
            return  # it gave none: asked again for a new session (_on_welcome)
        self._fetch_token()
