"""HTTP driver of the token service, on the standard library's ThreadingHTTPServer.

``POST /oauth2/token`` (application/x-www-form-urlencoded; client auth by HTTP Basic or by
``client_id``/``client_secret`` in the body) and ``GET /.well-known/jwks.json``. All the
decisions live in :class:`security.tokens.TokenService`; this file only parses HTTP, with
caps on body size and a socket timeout so a slow or hostile client cannot hold a thread,
and on connections served at once (each may cost a scrypt of a secret): past
:data:`MAX_CONNECTIONS` a connection is answered 503 with ``Retry-After`` and closed,
counted in ``agp_token_endpoint_refused_total{reason="busy"}``.

Before it signs, the endpoint has the trust store look at its revocation file (one stat,
:meth:`security.trust.TrustStore.refresh_if_revoked`, a reload only if it changed): `agp keys
revoke NAME` (another process) holds from the next request on, not from the router's next
periodic refresh of its trust snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily

from mesh.errors import Malformed

from .tokens import TokenService, oauth_error, parse_basic_auth

__all__ = ["TOKEN_PATH", "JWKS_PATH", "TokenHTTPServer"]

log = logging.getLogger("agp.security.token_http")

TOKEN_PATH: Final = "/oauth2/token"  # noqa: S105 (a URL path)
JWKS_PATH: Final = "/.well-known/jwks.json"
MAX_BODY: Final = 8 * 1024
MAX_DRAIN: Final = 64 * 1024
MAX_FIELDS: Final = 16
MAX_CONNECTIONS: Final = 64  # served at once; a thread each
_BUSY_BODY: Final = b'{"error": "temporarily_unavailable"}'
_BUSY: Final = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class _Handler(BaseHTTPRequestHandler):
    server_version = "agp-token"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds per socket read: slowloris guard

    service: TokenService  # set on the subclass the server builds
    revocations: Callable[[], None]  # and this: TrustStore.refresh_if_revoked, or a no-op

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Type" not in headers:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != JWKS_PATH:
            self._send(404, {"error": "not_found"}, {})
            return
        self._send(200, self.service.jwks(), {"Cache-Control": "public, max-age=60"})

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != TOKEN_PATH:
            self.close_connection = True
            self._send(404, {"error": "not_found"}, {})
            return
        self._send(*self._token())

    def _token(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return oauth_error("invalid_request", "Content-Length required")
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the unread body must not become the next request
            if 0 < length <= MAX_DRAIN:  # read it anyway, so the client sees our answer
                self.rfile.read(length)
            return oauth_error("invalid_request", f"body must be at most {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if ctype != "application/x-www-form-urlencoded":
            return oauth_error("invalid_request",
                               "Content-Type must be application/x-www-form-urlencoded")
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True,
                                         strict_parsing=bool(body),
                                         max_num_fields=MAX_FIELDS)
        except (ValueError, UnicodeDecodeError):
            return oauth_error("invalid_request", "malformed form body")
        auth_header = self.headers.get("Authorization")
        basic = None
        if auth_header is not None:
            try:
                basic = parse_basic_auth(auth_header)
            except Malformed as exc:
                return oauth_error("invalid_client", exc.message)
        self.revocations()
        return self.service.token_endpoint(form, basic)

    def do_PUT(self) -> None:
        self.close_connection = True
        self._send(405, {"error": "method_not_allowed"}, {"Allow": "GET, POST"})

    do_DELETE = do_PATCH = do_PUT


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, up to ``max_connections`` at once; past them a connection
    gets a canned 503 from the accepting thread (no thread of its own) and is closed."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler],
                 max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._count = threading.Lock()
        self.serving = 0  # connections with a thread now
        self.refused_busy = 0  # written by the accepting thread only

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count:
            full = self.serving >= self.max_connections
            if not full:
                self.serving += 1
        if full:
            self.refused_busy += 1
            try:
                request.sendall(_BUSY)  # (small: fits the socket's buffer, never blocks)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._count:
            self.serving -= 1


class TokenHTTPServer:
    """Serve a :class:`TokenService` on ``host:port`` (port 0 = pick one; see ``port``)."""

    def __init__(self, service: TokenService, *, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        look = getattr(service.trust, "refresh_if_revoked", None) or (lambda: None)
        handler = type("TokenHandler", (_Handler,),
                       {"service": service, "revocations": staticmethod(look)})
        self._httpd = _BoundedServer((host, port), handler, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> int:
        """Connections being served now (each on a thread of its own)."""
        return self._httpd.serving

    @property
    def refused_busy(self) -> int:
        """Connections answered 503 because ``max_connections`` were being served."""
        return self._httpd.refused_busy

    def collect(self) -> Iterator[Any]:
        """Prometheus: what the endpoint refused without serving (a Collector's method)."""
        fam = CounterMetricFamily("agp_token_endpoint_refused_total",
                                  "Token endpoint connections refused unserved, by reason",
                                  labels=["reason"])
        fam.add_metric(["busy"], self.refused_busy)
        yield fam

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="agp-token-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for the loop, close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> TokenHTTPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
