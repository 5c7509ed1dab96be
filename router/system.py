"""The router's own services, off the hot path: ``agp/router`` (ping and catalog for
anyone; stats, services and drain for admins), ``agp/system/auth`` (a token for the key the
connection authenticated with; revoke for admins), the registry's door (a lease only for a
name the caller may register, under its own key) and the check a direct stream's open gets.

A mixin of :class:`router.server.Router`: it answers through ``self._send`` and friends, so
whatever wraps the router's sends (a test's tap) sees these replies too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mesh import codec
from mesh.errors import Error, ErrorCode, NoSuchService, Unauthenticated
from mesh.wire import Cmd, pack_route
from proto import agp_pb2
from router.table import Peer

log = logging.getLogger("agp.router")

ROUTER_SERVICE = b"agp/router"
AUTH_SERVICE = b"agp/system/auth"
REGISTRY_SERVICE = b"agp/system/registry"


class SystemServices:
    """The router's own services and the checks at its system doors."""

    # provided by Router
    access: Any
    stats: Any
    table: Any
    config: Any
    peers: dict[bytes, Peer]
    secure: bool
    started_at: float
    _send: Any
    _error: Any
    _deny: Any

    @staticmethod
    def _direct_key_is_own(peer: Peer, msg: list[bytes]) -> bool:
        """A direct stream's agent lets in the key named in the open's envelope: it must be
        the key this connection authenticated with (one protobuf parse per stream open)."""
        try:
            key = agp_pb2.Envelope.FromString(msg[3]).sender_key
        except Exception:
            return False
        return bool(key) and key.decode(errors="replace") == peer.identity


    def _registry_allowed(self, peer: Peer, msg: list[bytes]) -> bool:
        """At the registry's door: a lease may only be taken for a name the caller may
        register, under the caller's own key (no one takes over another's service name)."""
        try:
            action = agp_pb2.Envelope.FromString(msg[3]).action if msg[3] else ""
            if action not in ("register", "heartbeat", "deregister"):
                return True
            record = codec.decode(msg[4:])
            name = str(record["name"]).encode()
            key = record.get("public_key")
        except Exception:
            return False
        return key == peer.identity and self.access.allowed(peer.session, "register", name)

    def _on_auth_service(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        """``agp/system/auth``: ``token`` for the key this connection authenticated with;
        ``revoke`` (admins) refuses a token id from now on, on every connection."""
        issue = getattr(self.access, "issue_for_key", None)
        try:
            action = agp_pb2.Envelope.FromString(msg[3]).action if msg[3] else "token"
            if issue is None or peer.identity is None:
                raise Unauthenticated("no token service on this router")
            if action == "revoke":
                if not self.access.allowed(peer.session, "admin", AUTH_SERVICE):
                    self._deny(peer, "admin", AUTH_SERVICE, ident)
                    return
                jti = str(codec.decode(msg[4:])["jti"])
                self.access.tokens.revoke(jti)  # type: ignore[attr-defined]
                body: Any = {"revoked": jti}
            else:
                body = issue(peer.identity)
        except (KeyError, TypeError) as exc:
            self._error(peer.rid, ErrorCode.MALFORMED, f"bad revoke request: {exc}", ident)
            return
        except Error as exc:
            self.stats.auth_failures["token"] += 1
            self._error(peer.rid, exc.code, exc.message, ident)
            return
        self._send([peer.rid, pack_route(Cmd.REPLY, 0, 0, 0, ident), AUTH_SERVICE, b"",
                    *codec.encode(body)])

    def drain_instance(self, name: bytes) -> dict[str, Any]:
        """Route nothing new to instance ``name``; what it has in flight finishes. Also called
        by the control plane embedded in this process, from its HTTP thread: one flag that
        the balancer reads, set in one step."""
        inst = self.table.instances.get(name)
        if inst is None:
            raise NoSuchService(f"no instance {name!r}")
        inst.accepting = False
        return {"instance": name.decode(errors="replace"), "accepting": False}

    def _catalog(self, peer: Peer) -> dict[str, list[str]]:
        """``{service: actions its instances serve}`` for the services ``peer`` may request
        (an agent naming no actions: an empty list, any action). A workflow's steps are
        checked against it before the run starts; nothing it may not call is disclosed."""
        out: dict[str, list[str]] = {}
        for name, svc in self.table.services.items():
            if self.secure and not self.access.may(peer.session, "request", name):
                continue
            actions: set[str] = set()
            for inst in svc.instances:
                actions.update(inst.actions)
            out[name.decode(errors="replace")] = sorted(actions)
        return out

    def _on_router_service(self, peer: Peer, msg: list[bytes], ident: int) -> None:
        """The router's own service, ``agp/router``: stats and services, for tools and tests."""
        try:
            action = agp_pb2.Envelope.FromString(msg[3]).action if msg[3] else ""
        except Exception:
            action = ""
        if action == "ping":  # anyone: a barrier (everything sent before it has been taken)
            self._send([peer.rid, pack_route(Cmd.REPLY, 0, 0, 0, ident), ROUTER_SERVICE, b"",
                        *codec.encode("pong")])
            return
        if action == "catalog":  # anyone: what it may call, so specs are checked up front
            self._send([peer.rid, pack_route(Cmd.REPLY, 0, 0, 0, ident), ROUTER_SERVICE, b"",
                        *codec.encode(self._catalog(peer))])
            return
        if self.secure and not self.access.allowed(peer.session, "admin", ROUTER_SERVICE):
            self._deny(peer, "admin", ROUTER_SERVICE, ident)
            return
        if action == "drain":  # admins: route nothing new to an instance; in-flight finishes
            try:
                name = str(codec.decode(msg[4:])["instance"]).encode()
            except Exception:
                self._error(peer.rid, ErrorCode.MALFORMED, "drain needs {instance: NAME}", ident)
                return
            try:
                body: Any = self.drain_instance(name)
            except NoSuchService as exc:
                self._error(peer.rid, exc.code, exc.message, ident)
                return
            log.warning("instance %s drained by %s", name.decode(errors="replace"), peer.name)
        elif action == "stats":
            body = {**self.stats.as_dict(), "peers": len(self.peers),
                         "router_id": self.config.router_id,
                         "uptime": time.time() - self.started_at}
        elif action == "services":
            body = self.table.snapshot()
        else:
            self._error(peer.rid, ErrorCode.NO_SUCH_ACTION, f"agp/router has no {action!r}", ident)
            return
        self._send([peer.rid, pack_route(Cmd.REPLY, 0, 0, 0, ident), ROUTER_SERVICE, b"",
                    *codec.encode(body)])
