"""ZAP (ZeroMQ RFC 27) authentication: CURVE with enrolled keys only, failing closed.

:class:`ZapPolicy` is the whole decision, sans-IO: it takes the request frames libzmq sends
and returns the reply frames, and never raises on bad input (400 for a malformed request,
500 if the trust lookup itself fails). :class:`ZapServer` is the thin IO driver: a thread
with a REP socket on ``inproc://zeromq.zap.01``.

Failing closed takes three locks, because libzmq alone accepts any CURVE key when no
handler is bound: :func:`curve_server` sets ``ZMQ_ZAP_ENFORCE_DOMAIN`` so libzmq refuses the
handshake when no handler answers; :func:`require_zap` probes the handler before a server
starts (and insists it refuses NULL); and the policy refuses every mechanism but CURVE.

On success the reply's user id is the client's z85 public key, so every message received on
that connection carries it as the ``User-Id`` property (:func:`peer_key`), and the metadata
carries ``X-Agp-Name``, the enrolled name (for logs only: the key is the identity).

Each handshake first lets the trust store look at its revocation file (one stat, a reload
only when it changed), so a key revoked by another process is refused from the next
handshake on, not from the router's next periodic refresh of the store.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import struct
import threading
from collections.abc import Collection, Sequence
from typing import Any, Final, Protocol

import zmq
from zmq.utils import z85

from mesh.errors import ConfigError, Unauthenticated

from .keys import KeyPair, normalize_key

__all__ = [
    "ZAP_ENDPOINT",
    "TrustLike",
    "ZapNotRunning",
    "ZapPolicy",
    "ZapServer",
    "curve_client",
    "curve_server",
    "peer_key",
    "require_zap",
]

log = logging.getLogger("agp.security.zap")

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_VERSION: Final = b"1.0"
DEFAULT_DOMAIN: Final = "agp"
MAX_FRAMES: Final = 16
MAX_FRAME_BYTES: Final = 1024
_EMPTY_METADATA: Final = b""


class ZapNotRunning(ConfigError):
    """No ZAP handler answers on this context: a CURVE server must not start."""


class TrustLike(Protocol):
    """What the policy needs from a trust store (:class:`security.trust.TrustStore` fits)."""

    def is_trusted(self, key: bytes) -> bool: ...

    def is_revoked(self, key: bytes) -> bool: ...

    def name_of(self, key: bytes) -> str | None: ...


def _metadata(props: dict[bytes, bytes]) -> bytes:
    """Encode ZMTP metadata (RFC 23): name-len(1) name value-len(4, big-endian) value."""
    out = bytearray()
    for name, value in props.items():
        out += bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return bytes(out)


class ZapPolicy:
    """Decide one ZAP request. Accept only CURVE with an enrolled, non-revoked key."""

    def __init__(self, trust: TrustLike, *, domains: Collection[str] | None = None) -> None:
        self.trust = trust
        self.domains = None if domains is None else frozenset(d.encode() for d in domains)
        self.stats: collections.Counter[str] = collections.Counter()
        # a store kept on disk re-reads it when its revocation file changed (a stat per
        # handshake, never per message: ZAP runs once per connection)
        self._revoked = getattr(trust, "revoked_now", None) or trust.is_revoked

    def handle(self, frames: Sequence[bytes]) -> list[bytes]:
        """Reply frames for request ``frames``; always a reply (a REP socket must answer)."""
        request_id = bytes(frames[1]) if len(frames) >= 2 else b""
        try:
            return self._decide(frames, request_id)
        except Exception:  # the trust lookup failed: refuse, with a distinct code
            log.exception("ZAP handler error")
            return self._refuse(request_id, b"500", "internal error")

    def _decide(self, frames: Sequence[bytes], request_id: bytes) -> list[bytes]:
        if len(frames) < 6 or len(frames) > MAX_FRAMES:
            return self._refuse(request_id, b"400", "malformed request")
        if any(len(f) > MAX_FRAME_BYTES for f in frames):
            return self._refuse(request_id, b"400", "malformed request")
        version, _, domain, _address, _routing_id, mechanism = (bytes(f) for f in frames[:6])
        credentials = frames[6:]
        if version != ZAP_VERSION:
            return self._refuse(request_id, b"400", "unsupported ZAP version")
        if self.domains is not None and domain not in self.domains:
            return self._refuse(request_id, b"400", "unknown domain")
        if mechanism != b"CURVE":
            return self._refuse(request_id, b"400", "mechanism not allowed")
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return self._refuse(request_id, b"400", "malformed request")
        key = z85.encode(bytes(credentials[0]))
        if self._revoked(key):  # one stat: `agp keys revoke` holds from this handshake
            return self._refuse(request_id, b"400", "revoked key")
        if not self.trust.is_trusted(key):
            # a key enrolled since the last periodic refresh must not be refused: libzmq
            # never retries a connection that failed authentication
            refresh = getattr(self.trust, "refresh_if_enrolled", None)
            if refresh is not None:
                refresh()
            if self.trust.is_revoked(key) or not self.trust.is_trusted(key):
                return self._refuse(request_id, b"400", "unknown key")
        self.stats["accepted"] += 1
        name = (self.trust.name_of(key) or "").encode()[:255]
        meta = _metadata({b"X-Agp-Name": name}) if name else _EMPTY_METADATA
        return [ZAP_VERSION, request_id, b"200", b"OK", key, meta]

    def _refuse(self, request_id: bytes, status: bytes, reason: str) -> list[bytes]:
        self.stats["refused:" + reason] += 1
        log.debug("ZAP refused: %s", reason)
        return [ZAP_VERSION, request_id, status, reason.encode(), b"", _EMPTY_METADATA]


class ZapServer:
    """Run a :class:`ZapPolicy` in a thread on the context's ZAP endpoint."""

    def __init__(self, context: zmq.Context[Any], policy: ZapPolicy, *,
                 endpoint: str = ZAP_ENDPOINT) -> None:
        self.context = context
        self.policy = policy
        self.endpoint = endpoint
        self._pipe: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind and start; raises :class:`ConfigError` if a handler is already bound."""
        if self._thread is not None:
            raise ConfigError("ZapServer already started")
        zap = self.context.socket(zmq.REP)
        zap.linger = 0
        try:
            zap.bind(self.endpoint)
        except zmq.ZMQError as exc:
            zap.close()
            raise ConfigError(f"cannot bind ZAP handler on {self.endpoint}: {exc}") from None
        pipe_addr = f"inproc://agp-zap-pipe-{os.getpid()}-{id(self)}"
        self._pipe = self.context.socket(zmq.PAIR)
        self._pipe.linger = 0
        self._pipe.bind(pipe_addr)
        theirs = self.context.socket(zmq.PAIR)
        theirs.linger = 0
        theirs.connect(pipe_addr)
        self._thread = threading.Thread(target=self._run, args=(zap, theirs),
                                        name="agp-zap", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._pipe is None:
            return
        self._pipe.send(b"STOP")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ZAP thread did not stop within %s s", timeout)
        self._pipe.close(linger=0)
        self._pipe, self._thread = None, None

    def __enter__(self) -> ZapServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, zap: zmq.Socket[Any], pipe: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:  # bounded by the STOP message (or the context's termination)
                events = dict(poller.poll())
                if pipe in events:
                    return
                if zap in events:
                    frames = zap.recv_multipart(copy=True)
                    try:
                        reply = self.policy.handle(frames)
                    except Exception:  # a custom policy failed: refuse, keep serving
                        log.exception("ZAP policy error")
                        rid = frames[1] if len(frames) > 1 else b""
                        reply = [ZAP_VERSION, rid, b"500", b"internal error", b"", b""]
                    zap.send_multipart(reply)
        except zmq.ContextTerminated:
            pass
        finally:
            with contextlib.suppress(zmq.ZMQError):
                zap.unbind(self.endpoint)  # synchronous for inproc: free for a restart now
            zap.close(linger=0)
            pipe.close(linger=0)


def require_zap(context: zmq.Context[Any], *, timeout: float = 2.0) -> None:
    """Raise :class:`ZapNotRunning` unless a ZAP handler answers, and refuses NULL.

    Call before binding any server socket, so a mis-wired process stops instead of
    silently accepting every key.
    """
    request_id = b"agp-probe-" + os.urandom(8).hex().encode()
    probe = context.socket(zmq.REQ)
    probe.linger = 0
    try:
        probe.connect(ZAP_ENDPOINT)
        probe.send_multipart([ZAP_VERSION, request_id, b"agp-probe", b"", b"", b"NULL"])
        if not probe.poll(int(timeout * 1000), zmq.POLLIN):
            raise ZapNotRunning(f"no ZAP handler answered on {ZAP_ENDPOINT} in {timeout} s")
        reply = probe.recv_multipart()
    finally:
        probe.close(linger=0)
    if len(reply) < 3 or reply[0] != ZAP_VERSION or reply[1] != request_id:
        raise ZapNotRunning("the ZAP handler sent a malformed reply")
    if reply[2] == b"200":
        raise ZapNotRunning("the ZAP handler accepts the NULL mechanism: not fail-closed")


def curve_server(sock: zmq.Socket[Any], keypair: KeyPair, *, domain: str = DEFAULT_DOMAIN) -> None:
    """Make ``sock`` a CURVE server that needs ZAP. Call before bind()."""
    sock.curve_secretkey = keypair.secret
    sock.curve_publickey = keypair.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: refuse, not accept-all


def curve_client(sock: zmq.Socket[Any], keypair: KeyPair, server_public: bytes | str) -> None:
    """Make ``sock`` a CURVE client of the server with public key ``server_public``."""
    sock.curve_serverkey = normalize_key(server_public)
    sock.curve_publickey = keypair.public
    sock.curve_secretkey = keypair.secret


def peer_key(frame: zmq.Frame) -> bytes:
    """The z85 public key ZAP authenticated for the connection ``frame`` arrived on."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        user_id = None
    if not isinstance(user_id, str) or len(user_id) != 40:
        raise Unauthenticated("message arrived without an authenticated CURVE key")
    return user_id.encode("ascii")
