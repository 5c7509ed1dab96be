"""Everything a secure router needs, assembled in one place: keys, trust store, a running
fail-closed ZAP handler, the token service (HTTP and over the mesh) and the RBAC policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq

from security.access import SecureAccess
from security.home import AUDIENCE, ISSUER, ensure_router, open_home
from security.rbac import PolicyStore
from security.token_http import TokenHTTPServer
from security.tokens import TokenService
from security.zap import ZapPolicy, ZapServer, require_zap


@dataclass
class SecureRouter:
    access: SecureAccess
    server_keypair: tuple[bytes, bytes]
    zap: ZapServer
    http: TokenHTTPServer

    def stop(self) -> None:
        self.http.stop()
        self.zap.stop()


def secure_router(home_dir: str | Path | None = None, *, policy: str | Path | None = None,
                  auth_port: int = 7780, token_ttl: int = 300,
                  context: zmq.Context | None = None) -> SecureRouter:  # type: ignore[type-arg]
    """Start ZAP (and check it refuses NULL: no handler, no service) and the token service."""
    ctx = context or zmq.Context.instance()
    home = open_home(home_dir)
    kp = ensure_router(home)
    trust = home.trust()
    zap = ZapServer(ctx, ZapPolicy(trust))
    zap.start()
    require_zap(ctx)
    tokens = TokenService(issuer=ISSUER, audience=AUDIENCE, registry=home.registry(),
                          keyring=home.keyring(), ttl=token_ttl, trust=trust,
                          revocations_path=home.revoked_tokens)
    http = TokenHTTPServer(tokens, port=auth_port)
    http.start()
    access = SecureAccess(trust, tokens, PolicyStore(policy or home.policy),
                          clients_path=home.clients)
    return SecureRouter(access, (kp.public, kp.secret), zap, http)
