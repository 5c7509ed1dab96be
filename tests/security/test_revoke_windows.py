"""`agp keys revoke NAME` (another process writing the trust directory) holds at once, not
from the router's next heartbeat (when its trust snapshot is refreshed): at the CURVE
handshake (ZAP), at the mesh's own token service (``agp/system/auth``), and at the control
plane's admin endpoints, which refuse a token whose key has been revoked since it was issued.

The router runs in a thread with a heartbeat far longer than any test here, so nothing
refreshes its trust store behind the test's back: what is refused, is refused by the look
each of those places takes at the revocation file (one stat)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry

from mesh import Mesh
from mesh.errors import Unauthenticated
from router.config import RouterConfig
from router.control import ControlServer, embedded, home_verifier
from router.control_status import StatusCollector
from router.server import Router
from security.cli import main as keys_cli
from security.home import Home, enroll_identity
from security.server import SecureRouter, secure_router
from tests.observability.obs_helpers import http, mesh_token

DRAIN_NOTHING = {"instance": "test/none/echo/one"}  # no such instance: 404 once authorized


@contextmanager
def quiet_router() -> Iterator[tuple[Router, SecureRouter]]:
    """A secure router on loopback whose heartbeat (the periodic trust refresh) comes once,
    at start, and not again within the test."""
    parts = secure_router(auth_port=0)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0",
                            heartbeat_interval=600.0, liveness=1200.0),
               access=parts.access, server_keypair=parts.server_keypair)
    r.start()
    t = threading.Thread(target=r.run, daemon=True)
    t.start()
    try:
        yield r, parts
    finally:
        r.stop()
        t.join(5)
        parts.stop()


def revoke(home: Home, name: str) -> None:
    assert keys_cli(["--home", str(home.root), "revoke", name]) == 0


def test_a_revoked_key_fails_its_very_next_handshake(mesh_home: Home) -> None:
    enroll_identity(mesh_home, "dave", roles=("client",))
    with quiet_router() as (r, parts):
        with Mesh.connect(r.endpoint, identity="dave", timeout=15.0) as m:
            assert m.request("agp/router", "ping") == "pong"
        snapshot = parts.access.trust._snap
        with Mesh.connect(r.endpoint, identity="dave", timeout=15.0) as m:
            assert m.request("agp/router", "ping") == "pong"
        assert parts.access.trust._snap is snapshot  # unchanged file: a stat, no reload
        revoke(mesh_home, "dave")
        with pytest.raises(Unauthenticated):
            Mesh.connect(r.endpoint, identity="dave", timeout=15.0).close()
        assert parts.zap.policy.stats["refused:revoked key"] == 1
        # the other keys are not disturbed by the reload
        with Mesh.connect(r.endpoint, identity="tester", timeout=15.0) as m:
            assert m.request("agp/router", "ping") == "pong"


def test_a_connection_made_before_the_revoke_gets_no_token_after_it(mesh_home: Home) -> None:
    enroll_identity(mesh_home, "dave", roles=("client",))
    with quiet_router() as (r, _), Mesh.connect(r.endpoint, identity="dave", timeout=15.0) as m:
        assert m.request("agp/system/auth", "token")["access_token"]
        failures = r.stats.auth_failures["token"]
        revoke(mesh_home, "dave")
        with pytest.raises(Unauthenticated, match="revoked"):
            m.request("agp/system/auth", "token")
        assert r.stats.auth_failures["token"] == failures + 1


def test_embedded_control_plane_refuses_a_token_of_a_key_revoked_since(
        mesh_home: Home) -> None:
    with quiet_router() as (r, parts):
        token = mesh_token(r.endpoint, "tester")  # an admin
        ctl = embedded(r, port=0, access=parts.access, interval=60.0,
                       registry=CollectorRegistry())
        try:
            url = ctl.url + "/api/admin/drain"
            assert http("POST", url, DRAIN_NOTHING, token=token)[0] == 404  # authorized
            revoke(mesh_home, "tester")
            code, body = http("POST", url, DRAIN_NOTHING, token=token)
            assert code == 401, body
            assert "revoked" in body["error"]
            assert ctl.dropped().get("admin_key_revoked") == 1
        finally:
            ctl.stop()


def test_control_plane_apart_refuses_a_token_of_a_key_revoked_since(mesh_home: Home) -> None:
    enroll_identity(mesh_home, "ops", roles=("admin",))
    with quiet_router() as (r, _):
        token = mesh_token(r.endpoint, "ops")
        still = mesh_token(r.endpoint, "tester")
        verifier, policy, trust = home_verifier(str(mesh_home.root))
        ctl = ControlServer(StatusCollector(None, interval=60.0).start(), port=0,
                            verifier=verifier, policy=policy, trust=trust,
                            drain=lambda name: {"drained": name}).start()
        try:
            url = ctl.url + "/api/admin/drain"
            assert http("POST", url, DRAIN_NOTHING, token=token)[0] == 200
            revoke(mesh_home, "ops")
            assert http("POST", url, DRAIN_NOTHING, token=token)[0] == 401
            assert http("POST", url, DRAIN_NOTHING, token=still)[0] == 200  # others: as before
            assert ctl.dropped() == {"admin_key_revoked": 1}
        finally:
            ctl.stop()


def test_a_hello_after_the_revoke_is_refused_though_its_handshake_came_before(
        mesh_home: Home) -> None:
    """A connection whose CURVE handshake passed just before `agp keys revoke` says HELLO
    after it: the session is refused then, not at the next heartbeat's expiry check."""
    enroll_identity(mesh_home, "dave", roles=("client",))
    with quiet_router() as (r, parts), \
            Mesh.connect(r.endpoint, identity="dave", timeout=15.0) as m:
        token = m.request("agp/system/auth", "token")["access_token"]
        key = mesh_home.keypair("dave").public.decode()
        assert parts.access.hello(key, token, "dave").principal is not None
        revoke(mesh_home, "dave")
        with pytest.raises(Unauthenticated, match="revoked"):
            parts.access.hello(key, token, "dave")
