"""security_demo: every refusal of a secure agp-mesh, one line each.

    .venv/bin/python examples/security_demo.py

It makes a throw-away AGP_HOME (router keys, trust store, token signing keys, RBAC policy),
starts a secure router (CURVE + fail-closed ZAP + OAuth2 tokens + RBAC) and an echo agent as
separate processes, then tries, as a client, everything the mesh must refuse and prints
what each attempt got. A correct client is served first and last. Nothing is mocked: the
tokens below are signed with the router's real key unless the point is that they are not.
The test twin of this script is tests/security/test_mesh_refusals.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.echo import Echo  # noqa: E402
from agents.procs import agent_process, router_process  # noqa: E402
from mesh import Error, Mesh  # noqa: E402
from mesh.core import Security  # noqa: E402
from mesh.wire import PROTOCOL_VERSION, Cmd, pack_route  # noqa: E402
from proto import agp_pb2  # noqa: E402
from security import jwt  # noqa: E402
from security.home import (  # noqa: E402
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
from security.keys import generate  # noqa: E402

SVC = "demo/ns/echo"


class Refusal(Exception):
    """What an attempt got when the refusal is not an exception (a silence, a drop)."""


class Demo:
    def __init__(self, home: Home, endpoint: str) -> None:
        self.home = home
        self.endpoint = endpoint
        self.failures = 0

    # ---- clients ----------------------------------------------------------------------
    def enroll(self, name: str, roles: tuple[str, ...] = ("client",),
               namespace: str | None = None) -> Security:
        enroll_identity(self.home, name, roles=roles, namespace=namespace)
        return self.security(name)

    def security(self, name: str, token: str | None = None) -> Security:
        sec: Security = client_security(name, home=self.home)  # type: ignore[assignment]
        if token is not None:
            sec.token_provider = lambda: token  # present exactly this token
        return sec

    def connect(self, sec: Security) -> Mesh:
        return Mesh.connect(self.endpoint, security=sec, timeout=5)

    def claims(self, sec: Security, sub: str, **override: Any) -> dict[str, Any]:
        """Claims the router would accept on ``sec``'s connection; ``override`` spoils one."""
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now, "nbf": now,
                  "exp": now + 300, "jti": jwt.b64url_encode(os.urandom(16)),
                  "roles": ["client"], "cnf": {jwt.CNF_CURVE: sec.public.decode()}}
        claims.update(override)
        return claims

    def token(self, sec: Security, sub: str, **override: Any) -> str:
        """A token signed with the router's real signing key (read from AGP_HOME)."""
        return self.home.keyring().sign(self.claims(sec, sub, **override))

    # ---- one line per attempt ---------------------------------------------------------
    def refused(self, what: str, attempt: Callable[[], Any]) -> None:
        try:
            result = attempt()
        except (Error, Refusal) as exc:
            print(f"  {what:<52} -> {exc}")
            return
        self.failures += 1
        print(f"  {what:<52} -> NOT REFUSED: {result!r}")

    def served(self, what: str, attempt: Callable[[], Any]) -> None:
        try:
            print(f"  {what:<52} -> served: {attempt()!r}")
        except Error as exc:
            self.failures += 1
            print(f"  {what:<52} -> UNEXPECTED {exc}")


# ---- the attempts ---------------------------------------------------------------------
def call_echo(demo: Demo, sec: Security, dest: str = SVC) -> Any:
    with demo.connect(sec) as m:
        return m.request(dest, "echo", "hello", timeout=5)


def no_curve(demo: Demo) -> None:
    """A plain DEALER (no CURVE) says HELLO: the handshake fails before any HELLO is read."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        sock.connect(demo.endpoint)
        hello = agp_pb2.Hello(protocol_version=PROTOCOL_VERSION, peer_name="plain")
        sock.send_multipart([pack_route(Cmd.HELLO), b"", hello.SerializeToString()])
        if mon.poll(5000) and not sock.poll(500):
            raise Refusal("no session (handshake refused, no WELCOME)")
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def until_refused(attempt: Callable[[], Any], timeout: float = 10.0) -> None:
    """Retry ``attempt`` until it is refused (a revocation takes up to a second to land)."""
    deadline = time.monotonic() + timeout
    while True:
        attempt()  # raises once refused
        if time.monotonic() > deadline:
            return


def open_session_after_revocation(demo: Demo, sec: Security, revoke: Callable[[], Any]) -> None:
    with demo.connect(sec) as m:
        m.request(SVC, "echo", "before", timeout=5)
        start = time.monotonic()
        revoke()
        while m.core.connected and time.monotonic() - start < 10:
            time.sleep(0.05)
        took = time.monotonic() - start
        try:
            m.request(SVC, "echo", "after", timeout=1.5)
        except Error as exc:
            raise Refusal(f"session dropped {took:.1f}s after revocation; request -> {exc}")


def publish_forbidden(demo: Demo, publisher: Security) -> None:
    """A refused publish is dropped by the router (counted); a watcher never sees it."""
    with demo.connect(demo.security("admin")) as watcher, demo.connect(publisher) as pub:
        news = watcher.subscribe("news.")
        stocks = watcher.subscribe("stocks.")
        before = watcher.request("agp/router", "stats")["denials"].get("publish", 0)
        pub.publish("news.flash", "leak")
        pub.publish("stocks.AAPL", "fine")  # after it, on the same connection
        stocks.get(timeout=5)
        after = watcher.request("agp/router", "stats")["denials"].get("publish", 0)
        if news.received == 0 and after > before:
            raise Refusal("dropped by the router (FORBIDDEN, counted in denials); "
                          "not delivered")
        return None


def subscribe(demo: Demo, sec: Security, prefix: str) -> Any:
    with demo.connect(sec) as m:
        return m.subscribe(prefix, timeout=2)


async def serve_as(demo: Demo, sec: Security, namespace: str, instance: str) -> str:
    agent = Echo(endpoint=demo.endpoint, namespace=namespace, instance=instance, security=sec)
    agent.register_with_registry = False
    try:
        await agent.start(timeout=5)
        return agent.instance_name
    finally:
        if agent.core is not None:
            await agent.core.close()
        agent._pool.shutdown(wait=True, cancel_futures=True)


def run(demo: Demo) -> None:
    home = demo.home
    admin = demo.security("admin")
    alice = demo.enroll("alice")
    ticker = demo.security("ticker")
    router_key = home.keypair("router").public

    print("positive control")
    demo.served("correct client (alice)", lambda: call_echo(demo, alice))

    print("transport: CURVE, and ZAP accepting enrolled keys only")
    demo.refused("no CURVE", lambda: no_curve(demo))
    demo.refused("wrong server key", lambda: demo.connect(
        Security(alice.public, alice.secret, generate().public)))
    stranger = generate()
    demo.refused("unknown (never enrolled) key", lambda: demo.connect(
        Security(stranger.public, stranger.secret, router_key)))
    mallory = demo.enroll("mallory")
    home.trust().revoke("mallory")
    demo.refused("revoked key, new connection",
                 lambda: until_refused(lambda: demo.connect(mallory).close()))
    demo.refused("revoked key, open connection", lambda: open_session_after_revocation(
        demo, demo.enroll("trudy"), lambda: home.trust().revoke("trudy")))

    print("tokens (each presented at HELLO on alice's connection)")
    demo.refused("valid key, no token: call a service", lambda: bootstrap_only(demo, alice))
    now = int(time.time())
    bad = {
        "expired token": demo.token(alice, "alice", iat=now - 900, nbf=now - 900,
                                    exp=now - 300),
        "not-yet-valid token (nbf in 10 min)": demo.token(alice, "alice", nbf=now + 600,
                                                          exp=now + 900),
        "forged signature (another Ed25519 key)": jwt.encode(
            demo.claims(alice, "alice", roles=["admin"]), SigningKey.generate(),
            home.keyring().current_kid),
        "alg: none": alg_none(demo.claims(alice, "alice", roles=["admin"])),
        "wrong audience": demo.token(alice, "alice", aud="another-api"),
        "wrong issuer": demo.token(alice, "alice", iss="https://evil.example"),
    }
    for what, token in bad.items():
        demo.refused(what, lambda t=token: demo.connect(demo.security("alice", t)))
    demo.enroll("bob")
    with demo.connect(alice) as m:
        stolen = m.request("agp/system/auth", "token")["access_token"]
    demo.refused("alice's real token on bob's connection",
                 lambda: demo.connect(demo.security("bob", stolen)))
    carol = demo.enroll("carol")
    with demo.connect(carol) as m:
        pinned_token = m.request("agp/system/auth", "token")["access_token"]
    jti = jwt.decode_unverified(pinned_token)[1]["jti"]

    def revoke_jti() -> None:
        with demo.connect(admin) as a:
            a.request("agp/system/auth", "revoke", {"jti": jti})

    demo.refused("revoked token id, open connection", lambda: open_session_after_revocation(
        demo, demo.security("carol", pinned_token), revoke_jti))
    demo.refused("revoked token id, new connection",
                 lambda: demo.connect(demo.security("carol", pinned_token)))

    print("RBAC (ticker may call demo/ns/echo and use stocks.> and tenants.acme.> only)")
    demo.served("ticker calls demo/ns/echo", lambda: call_echo(demo, ticker))
    demo.refused("ticker calls agp/router stats", lambda: admin_call(demo, ticker))
    demo.refused("ticker publishes news.flash", lambda: publish_forbidden(demo, ticker))
    demo.served("ticker subscribes stocks.",
                lambda: subscribe(demo, ticker, "stocks.") and "confirmed")
    for prefix, why in (("news.", "not its topic"), ("st", "partial segment"),
                        ("stocks", "partial segment"), ("tenants.globex.", "other tenant"),
                        ("tenants.", "every tenant"), ("", "empty prefix: everything")):
        demo.refused(f"ticker subscribes {prefix!r} ({why})",
                     lambda p=prefix: subscribe(demo, ticker, p))

    print("names")
    intruder = demo.enroll("intruder", roles=("agent",), namespace="intruder/ns")
    demo.refused("agent registers outside its namespace",
                 lambda: asyncio.run(serve_as(demo, intruder, "demo/ns", "i1")))
    squatter = demo.enroll("squatter", roles=("agent",), namespace="demo/ns")
    demo.refused("another key takes over demo/ns/echo/echo1",
                 lambda: asyncio.run(serve_as(demo, squatter, "demo/ns", "echo1")))

    print("positive control, after all that")
    demo.served("correct client (alice)", lambda: call_echo(demo, alice))


def alg_none(claims: dict[str, Any]) -> str:
    """An unsigned token: ``alg: none`` and an empty signature."""
    return ".".join([jwt.b64url_encode(b'{"alg":"none","typ":"JWT"}'),
                     jwt.b64url_encode(json.dumps(claims).encode()), ""])


def admin_call(demo: Demo, sec: Security) -> Any:
    with demo.connect(sec) as m:
        return m.request("agp/router", "stats", timeout=5)


def bootstrap_only(demo: Demo, sec: Security) -> None:
    """A token provider that presents no token leaves the connection in its bootstrap
    session: it may ask agp/system/auth for a token, and nothing else."""
    bare = Security(sec.public, sec.secret, sec.server_public, token_provider=lambda: "")
    with demo.connect(bare) as m:
        m.request(SVC, "echo", "hello", timeout=5)


def main() -> int:
    # each refusal is printed below; the client library's own log lines would repeat them
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="agp-security-demo-") as tmp:
        home = open_home(Path(tmp) / "home")
        policy = json.loads(json.dumps(DEFAULT_POLICY))
        policy["roles"]["ticker"] = {"allow": [
            {"actions": ["request"], "names": [SVC]},
            {"actions": ["publish", "subscribe"], "topics": ["stocks.>"]},
        ]}
        policy["roles"]["tenant"] = {"allow": [
            {"actions": ["publish", "subscribe"], "topics": ["tenants.{tenant}.>"]},
        ]}
        home.policy.write_text(json.dumps(policy, indent=2) + "\n")
        ensure_router(home)
        enroll_identity(home, "admin", roles=("admin",))
        enroll_identity(home, "echo-agent", roles=("agent",), namespace="demo/ns")
        enroll_identity(home, "ticker", roles=("ticker",))
        bind(home, "ticker", ("ticker", "tenant"), {"tenant": "acme"})
        env = {"AGP_HOME": str(home.root), "AGP_MDNS": "0"}
        logs = Path(tmp) / "logs"
        router = router_process(extra=["--auth-port", "0", "--home", str(home.root)],
                                log_dir=logs, env=env)
        echo = None
        demo = None
        print(f"agp-mesh security demo (AGP_HOME {home.root})")
        try:
            info = router.start(30)
            print(f"secure router at {info['router']}, token service at {info['auth']}")
            echo = agent_process("agents.echo", info["router"], name="echo", log_dir=logs,
                                 env=env, extra=["--namespace", "demo/ns", "--instance",
                                                 "echo1", "--identity", "echo-agent"])
            echo.start(30)
            demo = Demo(home, info["router"])
            run(demo)
        finally:
            if echo is not None:
                echo.stop(10)
            code = router.stop(10)
            print(f"router stopped (exit code {code})")
    print("not shown here: end-to-end sealing (Mesh.connect(..., e2e=True) or AGP_E2E=1): "
          "tests/security/test_e2e_mesh.py taps a real router and finds no plaintext and "
          "shows a tampered ciphertext refused; replays are refused by the receiver's window "
          "(tests/security/test_security_e2e.py).")
    if demo is None or demo.failures:
        print("some attempts did not behave as expected (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
