"""HTTP driver of the token service, on the standard library's ThreadingHTTPServer.

``POST /oauth2/token`` (application/x-www-form-urlencoded; client auth by HTTP Basic or by
``client_id``/``client_secret`` in the body) and ``GET /.well-known/jwks.json``. All the
decisions live in :class:`security.tokens.TokenService`; this file only parses HTTP, with
caps on body size and a socket timeout so a slow or hostile client cannot hold a thread.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from mesh.errors import Malformed

from .tokens import TokenService, oauth_error, parse_basic_auth

__all__ = ["TOKEN_PATH", "JWKS_PATH", "TokenHTTPServer"]

log = logging.getLogger("agp.security.token_http")

TOKEN_PATH: Final = "/oauth2/token"  # noqa: S105 (a URL path)
JWKS_PATH: Final = "/.well-known/jwks.json"
MAX_BODY: Final = 8 * 1024
MAX_DRAIN: Final = 64 * 1024
MAX_FIELDS: Final = 16


class _Handler(BaseHTTPRequestHandler):
    server_version = "agp-token"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds per socket read: slowloris guard

    service: TokenService  # set on the subclass the server builds

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
        return self.service.token_endpoint(form, basic)

    def do_PUT(self) -> None:
        self.close_connection = True
        self._send(405, {"error": "method_not_allowed"}, {"Allow": "GET, POST"})

    do_DELETE = do_PATCH = do_PUT


class TokenHTTPServer:
    """Serve a :class:`TokenService` on ``host:port`` (port 0 = pick one; see ``port``)."""

    def __init__(self, service: TokenService, *, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("TokenHandler", (_Handler,), {"service": service})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

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
