"""A client's access token across failures: a failed fetch is tried again (with a growing
wait), and a token provider's tokens are refreshed by their ``exp`` and asked for again when
the router refuses one. A real secure router on a thread of this process (CURVE, ZAP, tokens,
RBAC from the test's AGP_HOME) and real AsyncMesh clients on this test's loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from mesh.aio import AsyncMesh
from mesh.core import Security
from mesh.errors import Error, Unauthenticated
from security import jwt
from security.clients import ClientRegistry
from security.home import AUDIENCE, ISSUER, Home, client_security, enroll_identity
from tests.helpers import until as _until
from tests.security.sealed_mesh import secure_router_thread

DEADLINE = 20.0  # generous: 2 shared cores


async def until(cond: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition"
                ) -> Any:
    return await _until(cond, timeout, what)


async def admin_works(m: AsyncMesh) -> bool:
    """An admin-only call: refused (FORBIDDEN) on a bootstrap session, whose token-less
    connection may only ask for a token; refused or unanswered without a session."""
    try:
        return "router_id" in await m.request("agp/router", "stats", timeout=2)
    except Error:
        return False


async def until_admin_works(m: AsyncMesh, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await admin_works(m):
        assert time.monotonic() < deadline, f"{what} within {DEADLINE}s"


def sign(home: Home, sec: Security, sub: str, *, exp: float, now: float | None = None) -> str:
    """A token the router accepts for ``sec``'s key (signed with its real key), until
    ``exp``; an admin's, so a served admin call proves a token session."""
    now = time.time() if now is None else now
    claims = {"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": int(now), "nbf": int(now),
              "exp": int(exp), "jti": jwt.b64url_encode(os.urandom(16)), "roles": ["admin"],
              "client_id": sub, "cnf": {jwt.CNF_CURVE: sec.public.decode()}}
    return home.keyring().sign(claims)


def jti(token: str) -> str:
    return str(jwt.decode_unverified(token)[1]["jti"])


# ---------------------------------------------------------------- 1. the bootstrap fetch
def test_a_failed_token_fetch_after_a_refusal_is_tried_again_with_a_growing_wait(
        mesh_home: Home) -> None:
    """Its token revoked, a client bootstraps a new one over the mesh. When that fetch
    fails (the auth service has no OAuth2 client for the key, for a while), it used to be
    never tried again: the client sat on a token-less session for good."""
    enroll_identity(mesh_home, "alice", roles=("admin",))
    with secure_router_thread() as r:
        async def main() -> None:
            m = await AsyncMesh.connect(r.endpoint, identity="alice", timeout=DEADLINE)
            admin = await AsyncMesh.connect(r.endpoint, timeout=DEADLINE)  # "tester"
            try:
                sec = m.core.security
                assert sec is not None
                assert await admin_works(m)
                # the key stays enrolled, but no OAuth2 client is bound to it for now
                clients = r.access.clients_path
                saved = clients.read_bytes()
                reg = ClientRegistry.load(clients)
                assert reg.remove("alice")
                reg.save(clients)
                assert r.access.tokens.registry.remove("alice")
                refused = r.stats.auth_failures["token"]
                await admin.request("agp/system/auth", "revoke", {"jti": jti(sec.token)})
                await until(lambda: not sec.token, what="the revoked token dropped")
                seen: list[float] = []  # when each refused fetch was seen at the router
                while len(seen) < 3:
                    await until(lambda: r.stats.auth_failures["token"] > refused + len(seen),
                                what=f"fetch {len(seen) + 1} refused")
                    seen.append(time.monotonic())
                assert not await admin_works(m)  # a bootstrap session only
                clients.write_bytes(saved)  # bound again
                await until_admin_works(m, "a fresh token after the binding came back")
                assert sec.token
                # tried again after a wait that grows: never a hot loop (0.25-0.5 s, then
                # 0.5-1 s, less what the poll that saw each one may have been late by)
                assert seen[1] - seen[0] > 0.15, seen
                assert seen[2] - seen[1] > 0.35, seen
                assert m.core.counters["token_failures"] >= 3
            finally:
                await admin.close()
                await m.close()

        asyncio.run(main())


# ---------------------------------------------------------------- 2. a token provider
def test_a_providers_token_is_refreshed_before_its_exp(mesh_home: Home) -> None:
    """Its lifetime is read from its ``exp`` (it was taken as 300 s whatever it said, so a
    shorter token expired long before its refresh)."""
    lifetime = 8.0
    sec: Security = client_security("tester", home=mesh_home)  # type: ignore[assignment]
    asked: list[tuple[float, float]] = []  # (when, the exp it gave)

    def provider() -> str:
        now = time.time()
        exp = now + lifetime
        asked.append((now, exp))
        return sign(mesh_home, sec, "tester", exp=exp, now=now)

    sec.token_provider = provider
    with secure_router_thread() as r:
        async def main() -> None:
            m = await AsyncMesh.connect(r.endpoint, security=sec, timeout=DEADLINE)
            try:
                first = sec.token
                await until(lambda: len(asked) >= 2, timeout=lifetime + DEADLINE,
                            what="the provider asked for a refresh")
                assert asked[1][0] < int(asked[0][1]), asked  # before the first one's exp
                await until(lambda: sec.token != first, what="the new token presented")
                assert await admin_works(m)
            finally:
                await m.close()

        asyncio.run(main())


def test_a_refused_providers_token_makes_the_client_ask_again_with_a_growing_wait(
        mesh_home: Home) -> None:
    """After UNAUTHENTICATED the provider's token was kept: every later HELLO presented the
    same refused token. The provider is asked again, though not once per refusal: a burst
    of calls refused while its tokens are bad asks it only a few times."""
    sec: Security = client_security("tester", home=mesh_home)  # type: ignore[assignment]
    mode = {"good": True}
    asked: list[float] = []

    def provider() -> str:
        asked.append(time.monotonic())
        now = time.time()
        if mode["good"]:
            return sign(mesh_home, sec, "tester", exp=now + 300, now=now)
        return sign(mesh_home, sec, "tester", exp=now - 300, now=now - 900)  # expired

    sec.token_provider = provider
    with secure_router_thread() as r:
        async def main() -> None:
            m = await AsyncMesh.connect(r.endpoint, security=sec, timeout=DEADLINE)
            admin = await AsyncMesh.connect(r.endpoint, timeout=DEADLINE)  # its own token
            try:
                assert await admin_works(m)
                assert len(asked) == 1
                mode["good"] = False  # from now on it has only expired tokens
                revoked_at = time.monotonic()
                await admin.request("agp/system/auth", "revoke", {"jti": jti(sec.token)})
                await until(lambda: not m.core.connected, what="the session ended")
                for _ in range(20):  # each refused (UNKNOWN_SESSION, then a HELLO refused)
                    try:
                        await m.request("agp/router", "stats", timeout=5)
                    except Unauthenticated:
                        continue
                    raise AssertionError("a call was served without a valid token")
                elapsed = time.monotonic() - revoked_at
                again = len(asked) - 1
                # asked again, each ask at least 0.25, 0.5, 1, ... s after the one before
                # (not once per refusal: 20 or more)
                most = 1
                while 0.25 * (2 ** most - 1) <= elapsed:
                    most += 1
                assert 1 <= again <= most, (again, elapsed, asked)
                mode["good"] = True
                await until_admin_works(m, "served again once the provider had a good token")
                assert len(asked) <= again + 1 + 3  # (waits of 0.5-4 s while it recovered)
            finally:
                await admin.close()
                await m.close()

        asyncio.run(main())
