"""The control plane's HTTP side: one handler thread per connection (stdlib
``http.server``), serving the dashboard, the status snapshot, its event stream, metrics and
admin actions of a :class:`router.control.ControlServer`.

Slow or hostile clients cannot hold a handler thread: the whole request (line, headers,
body) must arrive within the server's ``request_timeout`` (a per-read timeout alone lets a
client trickle a byte every few seconds for ever), every write must leave within its
``write_timeout`` (an event stream whose reader stalls is cut off, its buffered bytes
dropped), and at most ``max_streams`` event streams run at once (503 beyond); each refusal is
counted by reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import struct
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.control import ControlServer

log = logging.getLogger("agp.control")

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
MAX_BODY = 64 * 1024


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DeadlineReader(io.RawIOBase):
    """The request's bytes under one deadline for the whole request; between reads the
    socket keeps the write timeout, so responses and events are bounded too."""

    def __init__(self, control: ControlServer, sock: socket.socket) -> None:
        self.control = control
        self.sock = sock
        self.deadline = time.monotonic() + control.request_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received in time")
            self.sock.settimeout(left)
            return self.sock.recv_into(buf)
        except TimeoutError:
            self.control.drop("request_timeout")
            raise
        finally:
            self.sock.settimeout(self.control.write_timeout)


class Handler(BaseHTTPRequestHandler):
    control: ControlServer
    server_version = "agp-control"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader: no deadline over the whole request
        self.rfile = io.BufferedReader(DeadlineReader(self.control, self.connection))

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
            try:
                self.wfile.write(body)
            except TimeoutError:
                self.control.drop("write_timeout")
                raise

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

    def do_HEAD(self) -> None:  # noqa: N802
        """Headers only: for the event stream, without starting one."""
        if self.path.split("?", 1)[0] == "/api/events":
            self._events_head()
        else:
            self.do_GET()  # _send writes no body for HEAD

    def _events_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _events(self) -> None:
        c = self.control
        with c._lock:
            full = c.sse_clients >= c.max_streams
            if not full:
                c.sse_clients += 1
        if full:
            c.drop("stream_limit")
            self._json(503, {"error": f"too many event streams ({c.max_streams} open); "
                                      "retry later, or poll /api/status"}, {"Retry-After": "5"})
            return
        try:
            self._events_head()
            version = c.status.version
            self.wfile.write(_event(c.status.status))
            self.wfile.flush()
            while not c.status.stopped:
                status, version = c.status.wait_newer(version, timeout=5.0)
                self.wfile.write(_event(status) if status is not None else b": keepalive\n\n")
                self.wfile.flush()
        except TimeoutError:  # the reader stalled: drop what is queued for it (RST on close)
            c.drop("stream_stalled")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
        except (BrokenPipeError, ConnectionResetError):
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
