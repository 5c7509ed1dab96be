"""Every refusal of the secure mesh, end to end: a real router process (CURVE + fail-closed
ZAP + tokens + RBAC), a real echo agent process, and real clients on 127.0.0.1.

In the style of pyzmq's ``tests/test_auth.py``: one named test per refusal, each asserting
the typed error the client gets, then that the router still serves a legitimate client.
One router and one echo agent serve the whole class (module-scoped); every test uses its
own identities, so revoking or refusing one never touches another test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq
from nacl.signing import SigningKey

from agents.echo import Echo
from agents.procs import ManagedProcess, agent_process, router_process
from mesh import (
    DeadlineExceeded,
    Forbidden,
    Malformed,
    Mesh,
    NoSuchService,
    Unauthenticated,
    Unavailable,
    codec,
)
from mesh.core import Security
from mesh.wire import PROTOCOL_VERSION, ROUTE, Cmd, pack_route, parse_error, parse_route
from proto import agp_pb2
from security import jwt
from security.home import (
    AUDIENCE,
    DEFAULT_POLICY,
    ISSUER,
    Home,
    bind,
    client_security,
    enroll_identity,
    ensure_router,
    open_home,
)
from security.keys import generate
from tests.helpers import wait_for

SVC = "test/ns/echo"
INSTANCE = "echo1"
DEADLINE = 10.0  # generous: 2 busy cores
ABSENCE = 0.5  # how long "nothing arrives" is watched, after a positive signal

# The default policy, plus a narrow role for the RBAC refusals: "ticker" may call the echo
# service (and nothing else), and publish/subscribe under stocks.> and its own tenant.
POLICY: dict[str, Any] = json.loads(json.dumps(DEFAULT_POLICY))
POLICY["roles"]["ticker"] = {"allow": [
    {"actions": ["request"], "names": [SVC]},
    {"actions": ["publish", "subscribe"], "topics": ["stocks.>"]},
]}
POLICY["roles"]["tenant"] = {"allow": [
    {"actions": ["publish", "subscribe"], "topics": ["tenants.{tenant}.>"]},
]}
# "walled" may call anything but the echo's namespace: its short name must not get it there
POLICY["roles"]["walled"] = {"allow": [{"actions": ["request"], "names": ["**"]}],
                             "deny": [{"actions": ["request"], "names": ["test/ns/**"]}]}
TICKERS = ("ticker-req", "ticker-pub", "ticker-sub", "ticker-empty", "ticker-partial",
           "ticker-tenant", "ticker-notice", "ticker-registry")


@dataclass
class SecureMesh:
    home: Home
    router: ManagedProcess
    echo: ManagedProcess

    @property
    def endpoint(self) -> str:
        return str(self.router.ready_info["router"])

    def identity(self, name: str, roles: tuple[str, ...] = ("client",),
                 namespace: str | None = None) -> Security:
        enroll_identity(self.home, name, roles=roles, namespace=namespace)
        return self.security(name)

    def security(self, name: str, token: str | None = None) -> Security:
        sec: Security = client_security(name, home=self.home)  # type: ignore[assignment]
        if token is not None:
            sec.token_provider = lambda: token
        return sec

    def connect(self, sec: Security, timeout: float = DEADLINE) -> Mesh:
        return Mesh.connect(self.endpoint, security=sec, timeout=timeout)

    def admin(self) -> Mesh:
        return self.connect(self.security("tester"))

    def stats(self) -> dict[str, Any]:
        with self.admin() as m:
            return dict(m.request("agp/router", "stats"))

    def assert_still_serves(self) -> None:
        """The positive control after every refusal: a legitimate client is served."""
        with self.admin() as m:
            assert m.request(SVC, "echo", "still here", timeout=DEADLINE) == "still here"


@pytest.fixture(scope="module")
def secure_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMesh]:
    root = tmp_path_factory.mktemp("refusals")
    home = open_home(root / "agp-home")
    home.policy.write_text(json.dumps(POLICY, indent=2) + "\n")
    ensure_router(home)
    enroll_identity(home, "tester", roles=("admin",))
    enroll_identity(home, "echo-agent", roles=("agent",), namespace="test/ns")
    enroll_identity(home, "walled", roles=("walled",))
    for name in TICKERS:  # bound before the router starts: a subscription is checked
        # against the policy of the last periodic reload (see security/access.py allowed_prefix)
        enroll_identity(home, name, roles=("ticker",))
        bind(home, name, ("ticker", "tenant"), {"tenant": "acme"})
    env = {"AGP_HOME": str(home.root), "AGP_MDNS": "0"}
    logs = root / "logs"
    router = router_process(extra=["--auth-port", "0", "--home", str(home.root)],
                            log_dir=logs, env=env)
    started: list[ManagedProcess] = []
    try:
        started.append(router)
        router.start(30)
        echo = agent_process("agents.echo", router.ready_info["router"], name="echo",
                             log_dir=logs, env=env,
                             extra=["--namespace", "test/ns", "--instance", INSTANCE,
                                    "--identity", "echo-agent"])
        started.append(echo)
        echo.start(30)
        yield SecureMesh(home, router, echo)
    finally:
        for p in reversed(started):
            p.stop(10)
        assert not [p.name for p in started if p.alive()]


# ---------------------------------------------------------------------------- helpers
def _claims(sec: Security, sub: str, **override: Any) -> dict[str, Any]:
    """Claims the router accepts for ``sub`` on the connection of ``sec``; override one."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now, "nbf": now,
              "exp": now + 300, "jti": jwt.b64url_encode(os.urandom(16)), "roles": ["client"],
              "client_id": sub, "cnf": {jwt.CNF_CURVE: sec.public.decode()}}
    claims.update(override)
    return claims


def _sign(home: Home, claims: dict[str, Any]) -> str:
    """Sign with the router's real signing key (read from AGP_HOME)."""
    return home.keyring().sign(claims)


def _refused(exc_info: pytest.ExceptionInfo[Unauthenticated], reason: str) -> None:
    assert f"token refused ({reason})" in str(exc_info.value), str(exc_info.value)


def _real_token(sm: SecureMesh, sec: Security) -> str:
    """A token issued by the router over the mesh, bound to ``sec``'s key."""
    with sm.connect(sec) as m:
        body = m.request("agp/system/auth", "token")
    return str(body["access_token"])


def _try_connect(sm: SecureMesh, sec: Security) -> Exception | None:
    """None if a connection succeeded (then closed at once), else the error it got."""
    try:
        m = sm.connect(sec, timeout=5)
    except Exception as exc:
        return exc
    m.close()
    return None


class RawPeer:
    """A bare DEALER speaking the wire by hand: for what the client library never sends."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, sec: Security | None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if sec is not None:
            sec.apply(self.sock)
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(endpoint)
        self.events: list[int] = []
        self._ids = iter(range(1, 1_000_000))

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def hello(self, token: str = "") -> int:
        hello = agp_pb2.Hello(protocol_version=PROTOCOL_VERSION, peer_name="raw", token=token,
                              kind=agp_pb2.CLIENT)
        self.sock.send_multipart([pack_route(Cmd.HELLO), b"", hello.SerializeToString()])
        return 0

    def request(self, dest: str, action: str, data: Any = None, cmd: int = Cmd.REQUEST) -> int:
        ident = next(self._ids)
        header = agp_pb2.Envelope(action=action).SerializeToString()
        self.sock.send_multipart([pack_route(cmd, 0, 0, 5000, ident), dest.encode(), header,
                                  *codec.encode(data)])
        return ident

    def recv(self, timeout: float = DEADLINE) -> list[bytes] | None:
        """The next message that is not a heartbeat, or None when none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return None
            msg = self.sock.recv_multipart()
            if ROUTE.unpack(msg[0])[1] != Cmd.HEARTBEAT:
                return msg

    def wait_event(self, wanted: int, timeout: float = DEADLINE) -> int:
        from zmq.utils.monitor import recv_monitor_message

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitor.poll(50):
                ev = int(recv_monitor_message(self.monitor)["event"])
                self.events.append(ev)
                if ev & wanted:
                    return ev
        raise AssertionError(f"no monitor event {wanted:#x} within {timeout}s: {self.events}")


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def _error_code(msg: list[bytes]) -> tuple[int, int, str]:
    route = parse_route(msg[0])
    code, text, _ = parse_error(route, msg)
    return route.cmd, int(code), text


async def _serve_as(sm: SecureMesh, sec: Security, namespace: str, instance: str) -> str:
    """Start an embedded echo agent; return the instance name the router accepted, then stop.
    Raises the error READY got."""
    agent = Echo(endpoint=sm.endpoint, namespace=namespace, instance=instance, security=sec)
    agent.register_with_registry = False
    try:
        await agent.start(timeout=DEADLINE)
        return agent.instance_name
    finally:
        if agent.core is not None:
            await agent.core.close()
        agent._pool.shutdown(wait=True, cancel_futures=True)


def _subscribe_refused(sm: SecureMesh, sec: Security, prefix: str) -> Exception:
    with sm.connect(sec) as m:
        with pytest.raises(Forbidden) as exc_info:
            m.subscribe(prefix, timeout=10)
        return exc_info.value


# ---------------------------------------------------------------------------- the tests
class TestMeshRefusals:
    # ---- positive controls -------------------------------------------------------------
    def test_correct_client_is_served(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("good-client")
        with secure_mesh.connect(sec) as m:
            assert m.request(SVC, "echo", {"x": 1}) == {"x": 1}
            assert m.request(f"{SVC}/{INSTANCE}", "whoami")["pid"] == secure_mesh.echo.pid
            sub = m.subscribe("stocks.")
            m.publish("stocks.AAPL", {"price": 1.0})
            assert sub.get(timeout=DEADLINE).data == {"price": 1.0}

    def test_hand_signed_token_control_is_accepted(self, secure_mesh: SecureMesh) -> None:
        """The claims the token tests start from are valid: each refusal below changes one."""
        sec = secure_mesh.identity("token-control")
        token = _sign(secure_mesh.home, _claims(sec, "token-control"))
        with secure_mesh.connect(secure_mesh.security("token-control", token)) as m:
            assert m.request(SVC, "echo", "ok") == "ok"

    # ---- transport: CURVE + ZAP --------------------------------------------------------
    def test_no_curve_gets_no_session(self, secure_mesh: SecureMesh,
                                      zctx: zmq.Context[Any]) -> None:
        with secure_mesh.admin() as admin:
            before = admin.request("agp/router", "stats")
            peer = RawPeer(zctx, secure_mesh.endpoint, None)
            try:
                peer.hello()
                peer.wait_event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                assert peer.recv(ABSENCE) is None  # no WELCOME, no ERROR: nothing at all
                assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in peer.events
            finally:
                peer.close()
            after = admin.request("agp/router", "stats")
        # the HELLO never reached the router: no session, not even a refused one
        assert after["hellos"] == before["hellos"]
        assert after["peers"] == before["peers"]
        secure_mesh.assert_still_serves()

    def test_a_client_without_identity_is_told_why_nobody_answers(
            self, secure_mesh: SecureMesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """Plain ZMTP to a CURVE server gets no answer at all; the client says what it
        lacks instead of only that nobody answered."""
        monkeypatch.delenv("AGP_IDENTITY", raising=False)
        with pytest.raises(Unavailable) as refused:
            Mesh.connect(secure_mesh.endpoint, timeout=1.5)
        assert "no identity" in str(refused.value)
        assert "AGP_IDENTITY" in str(refused.value)

    def test_wrong_server_key_is_refused(self, secure_mesh: SecureMesh) -> None:
        good = secure_mesh.identity("wrong-server-key")
        sec = Security(good.public, good.secret, generate().public)
        with pytest.raises(Unauthenticated, match="CURVE handshake"):
            secure_mesh.connect(sec)
        secure_mesh.assert_still_serves()

    def test_unknown_client_key_is_refused(self, secure_mesh: SecureMesh) -> None:
        stranger = generate()  # never enrolled
        sec = Security(stranger.public, stranger.secret,
                       secure_mesh.home.keypair("router").public)
        with pytest.raises(Unauthenticated, match="CURVE handshake"):
            secure_mesh.connect(sec)
        secure_mesh.assert_still_serves()

    def test_revoked_key_cannot_connect(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("revoked-new")
        assert _try_connect(secure_mesh, sec) is None  # the key worked before
        secure_mesh.home.trust().revoke("revoked-new")
        # the router's trust store refreshes every second: refused within a few seconds
        exc = wait_for(lambda: _try_connect(secure_mesh, secure_mesh.security("revoked-new")),
                       timeout=DEADLINE, interval=0.1, message="revoked key refused")
        assert isinstance(exc, Unauthenticated), repr(exc)
        secure_mesh.assert_still_serves()

    def test_revoked_key_open_connection_stops_working(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("revoked-open")
        with secure_mesh.connect(sec) as m:
            assert m.request(SVC, "echo", 1) == 1
            revoked_at = time.monotonic()
            secure_mesh.home.trust().revoke("revoked-open")
            wait_for(lambda: not m.core.connected, timeout=DEADLINE,
                     message="router dropped the revoked session")
            assert time.monotonic() - revoked_at < 5.0
            # the request is refused (UNKNOWN_SESSION, then the re-HELLO is refused);
            # today it surfaces at its deadline, see the report
            with pytest.raises(Unauthenticated):
                m.request(SVC, "echo", 2, timeout=1.5)
        secure_mesh.assert_still_serves()

    # ---- sessions and tokens -----------------------------------------------------------
    def test_valid_key_without_token_is_bootstrap_only(self, secure_mesh: SecureMesh,
                                                       zctx: zmq.Context[Any]) -> None:
        sec = secure_mesh.identity("no-token")
        peer = RawPeer(zctx, secure_mesh.endpoint, sec)
        try:
            peer.hello()  # no token
            welcome = peer.recv()
            assert welcome is not None
            assert parse_route(welcome[0]).cmd == Cmd.WELCOME
            for dest, action in ((SVC, "echo"), ("agp/router", "stats"),
                                 ("nobody/ns/svc", "x")):
                ident = peer.request(dest, action, "hi")
                msg = peer.recv()
                assert msg is not None
                assert _error_code(msg)[:2] == (Cmd.ERROR, agp_pb2.FORBIDDEN), (dest, msg)
                assert parse_route(msg[0]).ident == ident
            peer.sock.send_multipart([pack_route(Cmd.PUBLISH, 0, 0, 1, 0), b"stocks.X", b"",
                                      *codec.encode(1)])
            msg = peer.recv()
            assert msg is not None
            assert _error_code(msg)[1] == agp_pb2.FORBIDDEN
            # the one thing a bootstrap session may do: get a token bound to its key
            ident = peer.request("agp/system/auth", "token")
            reply = peer.recv()
            assert reply is not None
            assert parse_route(reply[0]).cmd == Cmd.REPLY
            assert parse_route(reply[0]).ident == ident
            token = codec.decode(reply[3:])["access_token"]
            _, claims = jwt.decode_unverified(token)
            assert claims["cnf"][jwt.CNF_CURVE] == sec.public.decode()
        finally:
            peer.close()
        secure_mesh.assert_still_serves()

    def test_expired_token_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-expired")
        now = int(time.time())
        token = _sign(secure_mesh.home, _claims(sec, "tok-expired", iat=now - 900,
                                                nbf=now - 900, exp=now - 300))
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-expired", token))
        _refused(exc_info, jwt.REASON_EXPIRED)
        secure_mesh.assert_still_serves()

    def test_not_yet_valid_token_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-nbf")
        now = int(time.time())
        token = _sign(secure_mesh.home, _claims(sec, "tok-nbf", nbf=now + 600,
                                                exp=now + 900))
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-nbf", token))
        _refused(exc_info, jwt.REASON_NOT_YET_VALID)
        secure_mesh.assert_still_serves()

    def test_forged_signature_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-forged")
        ring = secure_mesh.home.keyring()
        # the router's kid, another Ed25519 key
        token = jwt.encode(_claims(sec, "tok-forged", roles=["admin"]), SigningKey.generate(),
                           ring.current_kid)
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-forged", token))
        _refused(exc_info, jwt.REASON_BAD_SIGNATURE)
        secure_mesh.assert_still_serves()

    def test_alg_none_token_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-none")
        header = jwt.b64url_encode(b'{"alg":"none","typ":"JWT"}')
        body = jwt.b64url_encode(json.dumps(_claims(sec, "tok-none", roles=["admin"])).encode())
        token = f"{header}.{body}."
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-none", token))
        _refused(exc_info, jwt.REASON_BAD_ALG)
        secure_mesh.assert_still_serves()

    def test_wrong_audience_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-aud")
        token = _sign(secure_mesh.home, _claims(sec, "tok-aud", aud="some-other-api"))
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-aud", token))
        _refused(exc_info, jwt.REASON_WRONG_AUDIENCE)
        secure_mesh.assert_still_serves()

    def test_wrong_issuer_is_refused(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-iss")
        token = _sign(secure_mesh.home, _claims(sec, "tok-iss", iss="https://evil.example"))
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-iss", token))
        _refused(exc_info, jwt.REASON_WRONG_ISSUER)
        secure_mesh.assert_still_serves()

    def test_token_bound_to_another_key_is_refused(self, secure_mesh: SecureMesh) -> None:
        alice = secure_mesh.identity("tok-alice")
        secure_mesh.identity("tok-bob")
        stolen = _real_token(secure_mesh, alice)  # genuine, bound to alice's key
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-bob", stolen))
        _refused(exc_info, jwt.REASON_BINDING_MISMATCH)
        # the same token on alice's own connection is fine
        with secure_mesh.connect(secure_mesh.security("tok-alice", stolen)) as m:
            assert m.request(SVC, "echo", "mine") == "mine"
        secure_mesh.assert_still_serves()

    def test_revoked_token_id_ends_the_session(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("tok-revoked")
        token = _real_token(secure_mesh, sec)
        jti = jwt.decode_unverified(token)[1]["jti"]
        pinned = secure_mesh.security("tok-revoked", token)  # always presents this token
        with secure_mesh.connect(pinned) as m:
            assert m.request(SVC, "echo", 1) == 1
            with secure_mesh.admin() as admin:
                assert admin.request("agp/system/auth", "revoke", {"jti": jti}) == {
                    "revoked": jti}
            revoked_at = time.monotonic()
            wait_for(lambda: not m.core.connected, timeout=DEADLINE,
                     message="router dropped the session of the revoked token")
            assert time.monotonic() - revoked_at < 5.0
            with pytest.raises(Unauthenticated):
                m.request(SVC, "echo", 2, timeout=1.5)
        with pytest.raises(Unauthenticated) as exc_info:
            secure_mesh.connect(secure_mesh.security("tok-revoked", token))
        _refused(exc_info, jwt.REASON_REVOKED)
        # the key itself is still good: a fresh token works
        with secure_mesh.connect(secure_mesh.security("tok-revoked")) as m:
            assert m.request(SVC, "echo", 3) == 3
        secure_mesh.assert_still_serves()

    def test_a_batching_client_hears_why_its_session_ended(
            self, secure_mesh: SecureMesh, caplog: pytest.LogCaptureFixture) -> None:
        """The router batches what it sends to a batching client; ending the session must
        send that batch first, or the reason is dropped with the session and the client only
        learns, at its next HELLO, that its token is revoked."""
        sec = secure_mesh.identity("tok-batching")
        token = _real_token(secure_mesh, sec)
        jti = jwt.decode_unverified(token)[1]["jti"]
        caplog.set_level("ERROR", logger="agp")
        with secure_mesh.connect(secure_mesh.security("tok-batching", token)) as m:
            assert m.request(SVC, "echo", 1) == 1
            assert m.core.batching, "the router takes this client's batches"
            with secure_mesh.admin() as admin:
                admin.request("agp/system/auth", "revoke", {"jti": jti})

            def refusals() -> list[str]:
                return [r.getMessage() for r in caplog.records
                        if r.getMessage().startswith("router refused this client")]

            wait_for(lambda: bool(refusals()), timeout=DEADLINE,
                     message="the client heard its session refused")
            assert refusals()[0] == "router refused this client: credentials expired or revoked"

    def test_only_admins_revoke_tokens(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("not-admin")
        with secure_mesh.connect(sec) as m:
            token = m.request("agp/system/auth", "token")["access_token"]
            jti = jwt.decode_unverified(token)[1]["jti"]
            with pytest.raises(Forbidden):
                m.request("agp/system/auth", "revoke", {"jti": jti})
        with secure_mesh.connect(secure_mesh.security("not-admin", token)) as m:
            assert m.request(SVC, "echo", "not revoked") == "not revoked"
        secure_mesh.assert_still_serves()

    # ---- RBAC: requests, publishes, subscriptions --------------------------------------
    @pytest.fixture
    def ticker(self, secure_mesh: SecureMesh) -> Callable[[str], Security]:
        def make(name: str) -> Security:
            assert name in TICKERS
            return secure_mesh.security(name)
        return make

    def test_forbidden_service(self, secure_mesh: SecureMesh,
                               ticker: Callable[[str], Security]) -> None:
        with secure_mesh.connect(ticker("ticker-req")) as m:
            assert m.request(SVC, "echo", "allowed") == "allowed"
            with pytest.raises(Forbidden):
                m.request("agp/router", "stats")  # exists; admin only
            with pytest.raises(Forbidden):
                m.request(f"{SVC}/{INSTANCE}", "echo", "by instance")  # not in its policy
            with pytest.raises(Forbidden):  # refused before lookup: no existence oracle
                m.request("acme/hr/payroll", "list")
        secure_mesh.assert_still_serves()

    def test_the_catalog_lists_only_what_the_caller_may_request(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        """Every session may ask agp/router for its catalog (the workflow CLI checks names
        with it); it lists the services the caller may request, with their actions, and
        nothing else; the router's admin actions stay refused."""
        with secure_mesh.connect(ticker("ticker-req")) as m:  # may call test/ns/echo only
            catalog = m.request("agp/router", "catalog")
            assert set(catalog) == {SVC}
            assert "echo" in catalog[SVC]
            with pytest.raises(Forbidden):
                m.request("agp/router", "services")
        with secure_mesh.admin() as admin:
            assert SVC in admin.request("agp/router", "catalog")
        secure_mesh.assert_still_serves()

    def test_a_short_name_is_judged_as_the_service_it_reaches(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        with secure_mesh.connect(secure_mesh.security("walled")) as m:
            with pytest.raises(Forbidden):
                m.request(SVC, "echo", "by its full name")
            with pytest.raises(Forbidden):  # "echo" resolves to test/ns/echo: denied as it
                m.request("echo", "echo", "by its short name")
            with pytest.raises(NoSuchService):  # allowed, and nothing by that name
                m.request("acme/none/here", "echo", 1)
        with secure_mesh.connect(ticker("ticker-req")) as m:  # may call test/ns/echo only
            assert m.request("echo", "echo", "short") == "short"
        secure_mesh.assert_still_serves()

    def test_an_address_longer_than_any_name_is_refused_malformed(
            self, secure_mesh: SecureMesh) -> None:
        from mesh import AsyncMesh
        from mesh.nowait import ReplyFuture, ReplyWaiter
        from mesh.replies import decode_reply

        async def main() -> None:  # the client refuses it: sent as a hand-made client would
            m = await AsyncMesh.connect(secure_mesh.endpoint,
                                        security=secure_mesh.security("walled"))
            try:
                future = ReplyFuture(loop=asyncio.get_running_loop())
                m.core.start_request(Cmd.REQUEST, b"a" * 100_000, b"", [b"x"],
                                     ReplyWaiter(future, decode_reply, None, None, "long"),
                                     timeout=DEADLINE)
                with pytest.raises(Malformed, match="at most 255 bytes"):
                    await future  # (and not kept in any cache of policy decisions)
            finally:
                await m.close()

        asyncio.run(main())
        assert secure_mesh.stats()["malformed_by"].get("long_address", 0) == 1
        secure_mesh.assert_still_serves()

    def test_a_revoked_key_subscribes_no_more(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("revoked-sub")
        with secure_mesh.connect(sec) as m:
            m.subscribe("news.", timeout=DEADLINE)  # a live session: allowed
            secure_mesh.home.trust().revoke("revoked-sub")
            wait_for(lambda: not m.core.connected, timeout=DEADLINE,
                     message="router dropped the revoked session")
            before = secure_mesh.stats()["denials"].get("subscribe", 0)
            # its subscriber connection is still open: no new subscription through it (the
            # refusal's notice would go by the session it no longer has: never confirmed)
            with pytest.raises(DeadlineExceeded):
                m.subscribe("alerts.", timeout=3)
        assert secure_mesh.stats()["denials"].get("subscribe", 0) == before + 1
        secure_mesh.assert_still_serves()

    def test_forbidden_publish(self, secure_mesh: SecureMesh,
                               ticker: Callable[[str], Security]) -> None:
        before = secure_mesh.stats()["denials"].get("publish", 0)
        with secure_mesh.admin() as watcher, \
                secure_mesh.connect(ticker("ticker-pub")) as pub:
            news = watcher.subscribe("news.")
            stocks = watcher.subscribe("stocks.")
            pub.publish("news.flash", "forbidden")
            pub.publish("stocks.AAPL", "allowed")  # same connection, sent after
            assert stocks.get(timeout=DEADLINE).data == "allowed"
            # the router forwards in order: the refused one would have arrived first
            assert news.received == 0
        assert secure_mesh.stats()["denials"].get("publish", 0) >= before + 1
        secure_mesh.assert_still_serves()

    def test_forbidden_subscribe(self, secure_mesh: SecureMesh,
                                 ticker: Callable[[str], Security]) -> None:
        with secure_mesh.connect(ticker("ticker-sub")) as m:
            with pytest.raises(Forbidden):
                m.subscribe("news.", timeout=DEADLINE)
            assert m.subscribe("stocks.", timeout=DEADLINE) is not None  # allowed one works
        secure_mesh.assert_still_serves()

    def test_key_notices_are_heard_by_all_and_said_by_the_key_service_only(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        before = secure_mesh.stats()["denials"].get("publish", 0)
        with secure_mesh.connect(ticker("ticker-notice")) as m:
            notices = m.subscribe("agp.system.topickeys", timeout=DEADLINE)  # no rule needed
            with pytest.raises(Forbidden):  # ... but no wider: that would catch other topics
                m.subscribe("agp.system.", timeout=DEADLINE)
            with pytest.raises(NoSuchService):  # past RBAC: nobody serves keys in this mesh
                m.request("agp/system/keys", "topic_key", {"topic": "stocks.X"})
            stocks = m.subscribe("stocks.", timeout=DEADLINE)
            m.publish("agp.system.topickeys", {"reset": True})  # a forged rotation notice
            m.publish("stocks.AAPL", "after")  # same connection, forwarded in order
            assert stocks.get(timeout=DEADLINE).data == "after"
            assert notices.received == 0
        assert secure_mesh.stats()["denials"].get("publish", 0) >= before + 1

    def test_registry_topics_are_heard_by_all_and_said_by_the_registry_only(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        """A client whose policy lets it publish on every topic still may not forge the
        registry's events or beats (a beat of a new epoch sends every watcher back for the
        whole table); a ticker whose policy names only stocks.> may watch them."""
        before = secure_mesh.stats()["denials"].get("publish", 0)
        forger = secure_mesh.identity("registry-forger")  # the default client: publish on >
        with secure_mesh.connect(ticker("ticker-registry")) as watcher, \
                secure_mesh.connect(forger) as m:
            heard = watcher.subscribe("agp.registry.", timeout=DEADLINE)  # no rule needed
            assert watcher.subscribe("agp.registry.beat", timeout=DEADLINE) is not None
            with pytest.raises(Forbidden):  # ... but no wider
                watcher.subscribe("agp.", timeout=DEADLINE)
            stocks = watcher.subscribe("stocks.", timeout=DEADLINE)
            m.publish("agp.registry.beat", {"seq": 9, "epoch": "forged"})
            m.publish("agp.registry.events", {"seq": 9, "kind": "leave", "epoch": "forged"})
            m.publish("stocks.AAPL", "after")  # same connection, forwarded in order
            assert stocks.get(timeout=DEADLINE).data == "after"
            assert heard.received == 0
        assert secure_mesh.stats()["denials"].get("publish", 0) >= before + 2

    def test_subscribe_empty_prefix_refused(self, secure_mesh: SecureMesh,
                                            ticker: Callable[[str], Security]) -> None:
        sec = ticker("ticker-empty")
        before = secure_mesh.stats()["denials"].get("subscribe", 0)
        exc = _subscribe_refused(secure_mesh, sec, "")
        assert isinstance(exc, Forbidden)
        assert secure_mesh.stats()["denials"].get("subscribe", 0) >= before + 1
        secure_mesh.assert_still_serves()

    def test_subscribe_partial_segment_prefix_refused(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        sec = ticker("ticker-partial")
        # only stocks.> is allowed; "st" and "stocks" would also match "stocksXYZ.a"
        for prefix in ("st", "stocks"):
            exc = _subscribe_refused(secure_mesh, sec, prefix)
            assert isinstance(exc, Forbidden), (prefix, exc)
        secure_mesh.assert_still_serves()

    def test_subscribe_other_tenant_prefix_refused(
            self, secure_mesh: SecureMesh, ticker: Callable[[str], Security]) -> None:
        sec = ticker("ticker-tenant")
        with secure_mesh.connect(sec) as m:
            assert m.subscribe("tenants.acme.", timeout=DEADLINE) is not None  # its own
        for prefix in ("tenants.globex.", "tenants.", "tenants.acme"):
            exc = _subscribe_refused(secure_mesh, sec, prefix)
            assert isinstance(exc, Forbidden), (prefix, exc)
        secure_mesh.assert_still_serves()

    # ---- names -------------------------------------------------------------------------
    def test_register_outside_own_namespace_forbidden(self, secure_mesh: SecureMesh) -> None:
        sec = secure_mesh.identity("intruder", roles=("agent",), namespace="intruder/ns")
        with pytest.raises(Forbidden, match="register"):
            asyncio.run(_serve_as(secure_mesh, sec, "test/ns", "intruder1"))
        # control: the same identity may serve in its own namespace
        sec = secure_mesh.security("intruder")
        assert asyncio.run(_serve_as(secure_mesh, sec, "intruder/ns", "i1")) == \
            "intruder/ns/echo/i1"
        secure_mesh.assert_still_serves()

    def test_instance_takeover_forbidden(self, secure_mesh: SecureMesh) -> None:
        # allowed to register in test/ns, but echo1 belongs to another key
        sec = secure_mesh.identity("squatter", roles=("agent",), namespace="test/ns")
        with pytest.raises(Forbidden, match="register"):
            asyncio.run(_serve_as(secure_mesh, sec, "test/ns", INSTANCE))
        with secure_mesh.admin() as m:
            who = m.request(f"{SVC}/{INSTANCE}", "whoami")
            assert who["pid"] == secure_mesh.echo.pid  # still the original agent
        secure_mesh.assert_still_serves()
