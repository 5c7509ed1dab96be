"""The router's secure access layer: who a connection is, and what it may do.

Identity is the CURVE key that ZAP authenticated for the connection. A HELLO without a
token opens a *bootstrap* session that may only ask ``agp/system/auth`` for a token (the
enrolled key authenticates the client, as a TLS client certificate does in RFC 8705); a
HELLO with a token opens a full session once the token verifies (signature, issuer,
audience, time, revocation) and its ``cnf`` names this very connection's key. Every
decision after that is RBAC, cached per session and dropped when the policy reloads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import Unauthenticated
from security.clients import GRANT_CLIENT_CREDENTIALS, ClientRegistry
from security.rbac import PolicyStore, Principal
from security.tokens import TokenService, TokenVerifier
from security.trust import TrustStore

log = logging.getLogger("agp.access")

AUTH_SERVICE = b"agp/system/auth"
REGISTRY_SERVICE = b"agp/system/registry"
KEYS_SERVICE = b"agp/system/keys"
# the router's own service: ping and catalog for every session; its other actions (stats,
# services, drain) check the ``admin`` right themselves (router.system)
ROUTER_SERVICE = b"agp/router"
_SYSTEM = frozenset({AUTH_SERVICE, REGISTRY_SERVICE, KEYS_SERVICE, ROUTER_SERVICE})
# the topic key service's rotation notices: every session may hear them (a publisher must
# learn at once that a reader lost the right), only who may register the key service may say
KEY_NOTICES = b"agp.system.topickeys"
# the discovery registry's events and beats: every session may hear them, as it may ask the
# registry itself; only who may register the registry may say them (a forged beat of a new
# epoch would send every watcher to fetch the table again, a forged event would lie in it)
REGISTRY_TOPICS = b"agp.registry."
# the mesh's own topics, with the service whose ``register`` right it takes to publish on them
_SYSTEM_TOPICS: tuple[tuple[bytes, bool, bytes], ...] = (
    (KEY_NOTICES, True, KEYS_SERVICE), (REGISTRY_TOPICS, False, REGISTRY_SERVICE))


def _system_rule(action: str, name: bytes) -> tuple[bool | None, str, bytes]:
    """What the mesh's own services and topics need, whatever the policy says: a fixed
    answer, or None and the (action, name) the policy is asked about instead."""
    if action == "request":
        return (True if name in _SYSTEM else None), action, name
    if action in ("publish", "subscribe"):
        for topic, exact, service in _SYSTEM_TOPICS:
            if name == topic if exact else name.startswith(topic):
                if action == "subscribe":
                    return True, action, name
                return None, "register", service
    return None, action, name


@dataclass(eq=False)
class Session:
    identity: str
    principal: Principal | None  # None: bootstrap session (token not yet presented)
    expires: float = 0.0
    jti: str = ""
    generation: int = 0
    cache: dict[tuple[str, bytes], bool] = field(default_factory=dict)


class SecureAccess:
    secure = True

    def __init__(self, trust: TrustStore, tokens: TokenService, policy: PolicyStore,
                 clients_path: Path | None = None) -> None:
        self.clients_path = clients_path
        self.trust = trust
        self.tokens = tokens
        self.verifier: TokenVerifier = tokens.verifier()
        self.policy = policy
        self._generation = 0
        # the last full session of each key: its subscriber connection (the proxy's, which
        # carries no token) may subscribe while that session is live, and not after
        self._by_identity: dict[str, Session] = {}

    # ------------------------------------------------------------------ Access protocol
    def hello(self, identity: str | None, token: str, peer_name: str) -> Any:
        if identity is None:
            raise Unauthenticated("no authenticated CURVE key on this connection")
        self._admit_key(identity)  # (once per session: a handshake just before a revoke)
        if not token:
            return Session(identity, None, expires=time.time() + 60)
        claims = self.verifier.verify(token, identity)
        principal = Principal(sub=str(claims["sub"]), key=identity,
                              roles=tuple(claims.get("roles", ())))
        session = Session(identity, principal, float(claims["exp"]), str(claims["jti"]),
                          self._generation)
        self._by_identity[identity] = session
        return session

    def allowed(self, session: Any, action: str, name: bytes) -> bool:
        s: Session = session
        if s.principal is None:
            return action == "request" and name == AUTH_SERVICE
        if s.generation != self._generation:
            s.cache.clear()
            s.generation = self._generation
        key = (action, name)
        hit = s.cache.get(key)
        if hit is not None:
            return hit
        # every authenticated session may get tokens, keys, discovery, and hear the mesh's
        # own topics; saying them takes the right to register the service that owns them
        fixed, asked, asked_name = _system_rule(action, name)
        if fixed is not None:
            if len(s.cache) < 4096:
                s.cache[key] = fixed
            return fixed
        text = asked_name.decode(errors="replace")
        decision = self._decide(s.principal, asked, text)
        if not decision.allowed and self._policy_reloaded():
            # a binding written since the last periodic look: decide on the fresh policy
            s.cache.clear()
            s.generation = self._generation
            decision = self._decide(s.principal, asked, text)
        if len(s.cache) < 4096:
            s.cache[key] = decision.allowed
        if not decision.allowed:
            log.info("denied %s %s %r: %s", s.principal.sub, action,
                     name.decode(errors="replace"), decision.reason)
        return decision.allowed

    def may(self, session: Any, action: str, name: bytes) -> bool:
        """``allowed`` without its side effects (no log line, no policy reload, no cache
        entry): for listing what a session may do, where a "no" is not a refusal."""
        s: Session = session
        if s.principal is None:
            return False
        hit = s.cache.get((action, name)) if s.generation == self._generation else None
        if hit is not None:
            return hit
        fixed, asked, asked_name = _system_rule(action, name)
        if fixed is not None:
            return fixed
        return bool(self._decide(s.principal, asked, asked_name.decode(errors="replace")).allowed)

    def _decide(self, principal: Principal, action: str, text: str) -> Any:
        policy = self.policy.policy
        if action == "register":
            return policy.check_register(principal, text)
        return policy.check(principal, action, text)

    def allowed_prefix(self, identity: str | None, prefix: bytes) -> bool:
        session = self._by_identity.get(identity or "")
        if session is None:
            return False
        if self.expired(session, time.time()):  # expired or revoked token, revoked key
            del self._by_identity[session.identity]
            return False
        principal = session.principal
        assert principal is not None  # only full sessions are kept
        if prefix.startswith(KEY_NOTICES) or prefix.startswith(REGISTRY_TOPICS):
            return True  # (no wider: a shorter prefix would catch topics of the policy's)
        if self.policy.policy.check_subscribe_prefix(principal, prefix).allowed:
            return True
        if self._policy_reloaded():
            return self.policy.policy.check_subscribe_prefix(principal, prefix).allowed
        return False

    def expired(self, session: Any, now: float) -> bool:
        s: Session = session
        # (with the leeway the token was verified with: else a token taken within it would
        # open a session that the next look ends)
        leeway = self.verifier.leeway if s.principal is not None else 0.0
        if s.expires and now > s.expires + leeway:
            return True
        if s.jti and self.tokens.is_revoked(s.jti):
            return True
        return self.trust.is_revoked(s.identity) or not self.trust.is_trusted(s.identity)

    def refresh(self) -> None:
        self.trust.refresh()
        self._policy_reloaded()

    def _policy_reloaded(self) -> bool:
        """Reload the policy file if it changed; a new policy invalidates every session's
        decision cache (they compare generations)."""
        if not self.policy.maybe_reload():
            return False
        self._generation += 1
        return True

    def _admit_key(self, identity: str) -> None:
        """Unauthenticated unless the key is enrolled and, as the revocation file is now,
        not revoked."""
        if self.trust.revoked_now(identity) or not self.trust.is_trusted(identity):
            raise Unauthenticated("this key is not enrolled or was revoked")

    # ------------------------------------------------------------------ the auth service
    def issue_for_key(self, identity: str) -> dict[str, Any]:
        """A token for the OAuth2 client whose CURVE key this connection proved it holds,
        while that key is not revoked: the revocation file as it is now (one stat), not the
        snapshot of the last heartbeat, as the HTTP token endpoint looks."""
        self._admit_key(identity)
        name = self.trust.name_of(identity)
        client = self.tokens.registry.get(name) if name else None
        if client is None or client.curve_public.decode() != identity:
            self._reload_clients()
            client = self.tokens.registry.get(name) if name else None
        if client is None or client.curve_public.decode() != identity:
            raise Unauthenticated("this key is enrolled but no OAuth2 client is bound to it")
        if GRANT_CLIENT_CREDENTIALS not in client.grant_types:  # as the HTTP endpoint says
            raise Unauthenticated("this client may not use client_credentials")
        token, claims = self.tokens.issue(client)
        return {"access_token": token, "token_type": "Bearer",
                "expires_in": self.tokens.ttl, "scope": claims["scope"]}

    def _reload_clients(self) -> None:
        if self.clients_path is not None and self.clients_path.exists():
            self.tokens.registry = ClientRegistry.load(self.clients_path)
