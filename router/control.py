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

Admin actions need ``Authorization: Bearer <JWT>``: a token from the mesh's token service,
verified with the router's keys (signature, issuer, audience, expiry, revocation when the
verifier shares the router's list), then the RBAC ``admin`` action on the target name.
Missing or bad token: 401; valid token without the right: 403. Over HTTP there is no CURVE
key to bind the token to, so the server listens on 127.0.0.1 only, by default.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from router.control_status import ControlCollector, StatusCollector

log = logging.getLogger("agp.control")

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
MAX_BODY = 64 * 1024
MAX_SSE_CLIENTS = 32
ORCHESTRATOR = "agp/system/orchestrator"  # the RBAC name a run cancel is checked against
ROUTER = "agp/router"


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlServer:
    """The HTTP side. ``verifier`` has ``verify(token, key) -> claims`` (a
    ``security.tokens.TokenVerifier``); ``policy`` has ``check(principal, action, name)``
    (a ``security.rbac.PolicyStore``). Without them admin actions are refused (403)."""

    def __init__(self, status: StatusCollector, *, port: int = 7790, host: str = "127.0.0.1",
                 verifier: Any = None, policy: Any = None, store_url: str | None = None,
                 drain: Callable[[str], Any] | None = None) -> None:
        self.status = status
        self.verifier = verifier
        self.policy = policy
        self.store_url = store_url
        self.drain = drain
        self.sse_clients = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"control": self})
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
        principal = Principal(sub=str(claims.get("sub", "")),
                              key=cnf.get("curve") if isinstance(cnf, dict) else None,
                              roles=tuple(str(r) for r in claims.get("roles", ())))
        reload = getattr(self.policy, "maybe_reload", None)
        if reload is not None:
            reload()
        decision = self.policy.check(principal, "admin", target)
        if not decision:
            raise AdminError(403, f"{principal.sub} may not administer {target}: "
                                  f"{getattr(decision, 'reason', 'denied')}")
        return claims

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
            from mesh.errors import Error, NoSuchAction

            try:
                result = self.drain(instance)
            except NoSuchAction:
                raise AdminError(501, "the router does not support drain yet")
            except Error as exc:
                raise AdminError(502, f"{type(exc).__name__}: {exc}")
            log.warning("admin %s drained %s", claims.get("sub"), instance)
            return {"instance": instance, "result": result, "by": claims.get("sub")}
        raise AdminError(404, f"no admin action {action!r}")


class _Handler(BaseHTTPRequestHandler):
    control: ControlServer
    server_version = "agp-control"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ helpers
    def _send(self, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj, default=str).encode(), "application/json", headers)

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        c = self.control
        if path in ("/", "/index.html"):
            self._send(200, render_index(c.status.status), "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'self'; script-src 'self' "
                        "'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"})
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
            name = path[len("/static/"):]
            self._send(200, (DASHBOARD / name).read_bytes(), STATIC[name])
        elif path == "/api/status":
            self._json(200, c.status.status)
        elif path == "/api/events":
            self._events()
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"ok": True, "router": bool(c.status.status.get("ok"))})
        else:
            self._json(404, {"error": f"no such page {path}"})

    do_HEAD = do_GET

    def _events(self) -> None:
        c = self.control
        with c._lock:
            if c.sse_clients >= MAX_SSE_CLIENTS:
                self._json(503, {"error": "too many event streams"})
                return
            c.sse_clients += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            status, version = c.status.status, -1
            self.wfile.write(_event(status))
            self.wfile.flush()
            version = c.status.version
            while not c.status.stopped:
                status, version = c.status.wait_newer(version, timeout=5.0)
                self.wfile.write(_event(status) if status is not None else b": keepalive\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            with c._lock:
                c.sse_clients -= 1

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if not path.startswith("/api/admin/"):
            self._json(404, {"error": f"no such endpoint {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                raise AdminError(413, "body too large")
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise AdminError(400, "body is not JSON")
            if not isinstance(body, dict):
                raise AdminError(400, "body must be a JSON object")
            result = self.control.admin(path[len("/api/admin/"):],
                                        self.headers.get("Authorization"), body)
        except AdminError as exc:
            headers = ({"WWW-Authenticate": 'Bearer realm="agp-mesh"'}
                       if exc.status == 401 else None)
            self._json(exc.status, {"error": exc.message}, headers)
            return
        except ValueError:
            self._json(400, {"error": "bad Content-Length"})
            return
        self._json(200, result)


def _event(status: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(status, default=str, separators=(",", ":")).encode() + b"\n\n"


def render_index(status: dict[str, Any]) -> bytes:
    """The page with the current snapshot inlined, every ``<`` written ``\\u003c`` (still
    the same JSON): no value an agent chose (a label, an error) can close the script element
    or open a comment that swallows the rest of the page."""
    page = (DASHBOARD / "index.html").read_text(encoding="utf-8")
    data = json.dumps(status, default=str, separators=(",", ":")).replace("<", "\\u003c")
    return page.replace("/*AGP_STATUS*/null", data).encode()


# ---------------------------------------------------------------------- assembly
def home_verifier(home_dir: str | None = None) -> tuple[Any, Any]:
    """A token verifier and policy from AGP_HOME, for a control plane apart from the router:
    the router's signing keys (re-read when the file changes) and its RBAC policy file.
    Token revocations live in the router's memory and are not seen from here."""
    import os

    from security.home import AUDIENCE, ISSUER, open_home
    from security.rbac import PolicyStore
    from security.tokens import SigningKeyRing, TokenVerifier

    home = open_home(home_dir)
    cache: dict[str, Any] = {}

    def keys() -> Any:
        mtime = os.stat(home.signing).st_mtime_ns
        if cache.get("mtime") != mtime:
            cache["keys"] = SigningKeyRing.load(home.signing).key_set()
            cache["mtime"] = mtime
        return cache["keys"]

    return TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE), PolicyStore(home.policy)


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
    (REGISTRY if registry is None else registry).register(ControlCollector(status))
    return ControlServer(status, port=port, verifier=getattr(access, "verifier", None),
                         policy=getattr(access, "policy", None), store_url=store_url).start()


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
    verifier, policy = (None, None) if args.insecure else home_verifier(args.home)
    status = StatusCollector(mesh_fetcher(mesh), store_url=args.store,
                             interval=args.interval).start()
    REGISTRY.register(ControlCollector(status))
    server = ControlServer(status, port=args.port, host=args.host, verifier=verifier,
                           policy=policy, store_url=args.store,
                           drain=lambda name: mesh.request(ROUTER, "drain", {"instance": name},
                                                           timeout=5.0)).start()
    print(json.dumps({"event": "ready", "url": server.url, "port": server.port,
                      "pid": os.getpid()}), flush=True)
    stop.wait()
    server.stop()
    mesh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
