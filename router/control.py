"""The control plane over HTTP: dashboard, status API, live events, metrics, admin actions.

    GET  /                 the dashboard (static page; the first snapshot inlined, so it
                           shows the mesh before any script fetch completes)
    GET  /static/<file>    its CSS and JS (router/dashboard/)
    GET  /api/status       the latest snapshot (JSON; see router.control_status)
    GET  /api/events       server-sent events: one snapshot a second
    GET  /metrics          Prometheus, the default registry (+ the mesh as seen from here)
    POST /api/admin/cancel {"run": ID}        cancel a workflow run (needs the store)
    POST /api/admin/drain  {"instance": NAME} stop routing new work to an instance

Why stdlib ``http.server`` in a thread: the control plane serves a handful of operators and
one Prometheus, so a dependency-free threaded server is plenty, and it can live inside the
router's process (``embedded``) or apart (``python -m router.control``).

Slow or hostile clients cannot hold a server thread: a request (line, headers, body) must
arrive within ``request_timeout`` in all (a per-read timeout alone lets a client trickle a
byte every few seconds for ever), every write must leave within ``write_timeout`` (an event
stream whose reader stalls is cut off, and its buffered bytes dropped), and at most
``max_streams`` event streams run at once (503 beyond). Each refusal is counted by reason in
``ControlServer.drops`` (``agp_control_http_dropped_total``).

Admin actions need ``Authorization: Bearer <JWT>``: a token from the mesh's token service,
verified with the router's keys (signature, issuer, audience, expiry, revocation when the
verifier shares the router's list), then the key it was issued to (``cnf.curve``) against the
trust store's revocation file as it is now (one stat: `agp keys revoke admin` ends that
admin's tokens here at once, not when they expire), then the RBAC ``admin`` action on the
target name. Missing or bad token, or a revoked key: 401; valid token without the right:
403. Over HTTP there is no CURVE key to bind the token to, so the server listens on
127.0.0.1 only, by default.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from router.control_http import AdminError, Handler, render_index
from router.control_status import ControlCollector, StatusCollector

__all__ = ["AdminError", "ControlServer", "embedded", "main", "render_index"]

log = logging.getLogger("agp.control")

MAX_SSE_CLIENTS = 32
REQUEST_TIMEOUT = 10.0  # s for a whole request to arrive
WRITE_TIMEOUT = 10.0  # s for one response or one event to leave
ORCHESTRATOR = "agp/system/orchestrator"  # the RBAC name a run cancel is checked against
ROUTER = "agp/router"


class ControlServer:
    """The HTTP side. ``verifier`` has ``verify(token, key) -> claims`` (a
    ``security.tokens.TokenVerifier``); ``policy`` has ``check(principal, action, name)``
    (a ``security.rbac.PolicyStore``). Without them admin actions are refused (403).
    ``trust`` (a ``security.trust.TrustStore``): whose keys are revoked; with it, a token
    must name its key and that key must not be revoked."""

    def __init__(self, status: StatusCollector, *, port: int = 7790, host: str = "127.0.0.1",
                 verifier: Any = None, policy: Any = None, trust: Any = None,
                 store_url: str | None = None,
                 drain: Callable[[str], Any] | None = None,
                 request_timeout: float = REQUEST_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_streams: int = MAX_SSE_CLIENTS) -> None:
        self.status = status
        self.verifier = verifier
        self.policy = policy
        self.trust = trust
        self.store_url = store_url
        self.drain = drain
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_streams = max_streams
        self.sse_clients = 0
        self.drops: Counter[str] = Counter()  # request_timeout, write_timeout, stream_*
        self._lock = threading.Lock()
        handler = type("Handler", (Handler,), {"control": self, "timeout": request_timeout})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="agp-control-http",
                                        daemon=True)
        self._thread.start()
        return self

    def drop(self, reason: str) -> None:
        """Count one refused or cut-off connection (handler threads count at once)."""
        with self._lock:
            self.drops[reason] += 1

    def dropped(self) -> dict[str, int]:
        """A copy of the counts by reason, for a scrape from another thread."""
        with self._lock:
            return dict(self.drops)

    def stop(self) -> None:
        self.status.stop()  # wakes SSE streams so they end
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ admin
    def authorize(self, header: str | None, target: str) -> dict[str, Any]:
        """Claims of an admin allowed to act on ``target``; AdminError(401/403) otherwise."""
        if self.verifier is None or self.policy is None:
            raise AdminError(403, "admin actions are disabled: no token verifier configured")
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AdminError(401, "an admin bearer token is required")
        try:
            claims = self.verifier.verify(token.strip(), None)
        except Exception as exc:
            raise AdminError(401, f"invalid token: {getattr(exc, 'reason', None) or exc}")
        from security.rbac import Principal

        cnf = claims.get("cnf") or {}
        key = cnf.get("curve") if isinstance(cnf, dict) else None
        if self.trust is not None and self._key_revoked(key):
            self.drop("admin_key_revoked")
            raise AdminError(401, "the key this token was issued to is revoked")
        principal = Principal(sub=str(claims.get("sub", "")), key=key,
                              roles=tuple(str(r) for r in claims.get("roles", ())))
        reload = getattr(self.policy, "maybe_reload", None)
        if reload is not None:
            reload()
        decision = self.policy.check(principal, "admin", target)
        if not decision:
            raise AdminError(403, f"{principal.sub} may not administer {target}: "
                                  f"{getattr(decision, 'reason', 'denied')}")
        return claims

    def _key_revoked(self, key: Any) -> bool:
        """Revoked now, or not a key at all (a token bound to no key cannot be checked)."""
        if not isinstance(key, str) or not key:
            return True
        return bool(self.trust.revoked_now(key))  # (an admin request: one stat)

    def admin(self, action: str, header: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if action == "cancel":
            run = str(body.get("run", ""))
            if not run:
                raise AdminError(400, "body needs {\"run\": ID}")
            claims = self.authorize(header, ORCHESTRATOR)
            if not self.store_url:
                raise AdminError(409, "no workflow store configured (AGP_WORKFLOW_STORE)")
            import asyncio

            from agents.orchestrator import cancel_in_store
            from mesh.workflow import RunNotFound

            try:
                record = asyncio.run(cancel_in_store(self.store_url, run))
            except RunNotFound as exc:
                raise AdminError(404, str(exc))
            log.warning("admin %s cancelled run %s", claims.get("sub"), record.id)
            return {"run": record.id, "state": record.state.value, "by": claims.get("sub")}
        if action == "drain":
            instance = str(body.get("instance", ""))
            if instance.count("/") < 3:
                raise AdminError(400, "body needs {\"instance\": \"org/ns/service/instance\"}")
            claims = self.authorize(header, ROUTER)
            if self.drain is None:
                raise AdminError(501, "this control plane has no router connection")
            from mesh.errors import Error, NoSuchAction, NoSuchService

            try:
                result = self.drain(instance)
            except NoSuchService as exc:
                raise AdminError(404, exc.message)
            except NoSuchAction:
                raise AdminError(501, "the router does not support drain yet")
            except Error as exc:
                raise AdminError(502, f"{type(exc).__name__}: {exc}")
            log.warning("admin %s drained %s", claims.get("sub"), instance)
            return {"instance": instance, "result": result, "by": claims.get("sub")}
        raise AdminError(404, f"no admin action {action!r}")


# ---------------------------------------------------------------------- assembly
def home_verifier(home_dir: str | None = None) -> tuple[Any, Any, Any]:
    """A token verifier, policy and trust store from AGP_HOME, for a control plane apart
    from the router: the router's signing keys and the tokens it revoked (each re-read when
    its file changes), its RBAC policy file, and the revoked keys (re-read likewise)."""
    import os

    from security.home import AUDIENCE, ISSUER, open_home
    from security.rbac import PolicyStore
    from security.tokens import RevokedOnDisk, SigningKeyRing, TokenVerifier

    home = open_home(home_dir)
    cache: dict[str, Any] = {}

    def keys() -> Any:
        mtime = os.stat(home.signing).st_mtime_ns
        if cache.get("mtime") != mtime:
            cache["keys"] = SigningKeyRing.load(home.signing).key_set()
            cache["mtime"] = mtime
        return cache["keys"]

    return (TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE,
                          revocations=RevokedOnDisk(home.revoked_tokens)),
            PolicyStore(home.policy), home.trust())


def embedded(router: Any, *, port: int = 7790, access: Any = None,
             store_url: str | None = None, interval: float = 1.0,
             registry: Any = None) -> ControlServer:
    """A control plane inside the router's process, reading the router directly and sharing
    its token verifier (revocations included) and policy. ``registry``: where to export the
    control plane's view (default: the process's default Prometheus registry)."""
    from prometheus_client import REGISTRY

    from router.control_status import router_fetcher

    status = StatusCollector(router_fetcher(router), store_url=store_url,
                             interval=interval).start()
    # a drain from here is done on the router's own table, as the router's `drain` action
    # does: one flag an instance's picks read (a request picked a moment before still goes)
    server = ControlServer(status, port=port, verifier=getattr(access, "verifier", None),
                           policy=getattr(access, "policy", None),
                           trust=getattr(access, "trust", None), store_url=store_url,
                           drain=lambda name: router.drain_instance(name.encode()))
    (REGISTRY if registry is None else registry).register(ControlCollector(status, server))
    return server.start()


def main(argv: list[str] | None = None) -> int:
    """``python -m router.control`` / ``agp control``: a control plane as a mesh client."""
    import argparse
    import os
    import signal

    p = argparse.ArgumentParser(prog="agp control", description=main.__doc__)
    p.add_argument("--endpoint", default=os.environ.get("AGP_ROUTER"), help="router endpoint")
    p.add_argument("--port", type=int, default=7790, help="HTTP port on 127.0.0.1 (0 picks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--identity", default=os.environ.get("AGP_CONTROL_IDENTITY", "agp-control"),
                   help="enrolled identity with the admin role (agp keys new NAME --role admin)")
    p.add_argument("--home", default=None, help="AGP_HOME (keys, signing keys, policy)")
    p.add_argument("--store", default=os.environ.get("AGP_WORKFLOW_STORE"),
                   help="workflow store URL (sqlite:///runs.db)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--insecure", action="store_true", help="router runs --insecure")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.home:
        os.environ["AGP_HOME"] = args.home
    from prometheus_client import REGISTRY

    from mesh import Mesh
    from mesh.errors import Error
    from router.control_status import mesh_fetcher

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    mesh: Any = None
    while mesh is None and not stop.is_set():  # the router may start after us
        try:
            mesh = Mesh.connect(args.endpoint, identity=None if args.insecure else args.identity,
                                timeout=5.0)
        except Error as exc:
            log.warning("router not reachable yet: %s", exc)
            stop.wait(1.0)
    if mesh is None:
        return 0
    verifier, policy, trust = (None, None, None) if args.insecure else home_verifier(args.home)
    status = StatusCollector(mesh_fetcher(mesh), store_url=args.store,
                             interval=args.interval).start()
    server = ControlServer(status, port=args.port, host=args.host, verifier=verifier,
                           policy=policy, trust=trust, store_url=args.store,
                           drain=lambda name: mesh.request(ROUTER, "drain", {"instance": name},
                                                           timeout=5.0))
    REGISTRY.register(ControlCollector(status, server))
    server.start()
    print(json.dumps({"event": "ready", "url": server.url, "port": server.port,
                      "pid": os.getpid()}), flush=True)
    stop.wait()
    server.stop()
    mesh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
