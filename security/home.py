"""Where a mesh keeps its secrets: ``AGP_HOME`` (default ``~/.agp``), and first-run setup.

    keys/NAME.key, keys/NAME.key_secret   Curve25519 keypairs (0600), zmq.auth format
    trust/                                enrolled and revoked public keys
    auth/signing.json                     the token service's Ed25519 signing keys (0600)
    auth/clients.json                     OAuth2 clients: id, secret hash, CURVE key, roles
    policies.json                         the RBAC policy (copied from the default once)

``enroll_identity`` is what ``agp keys new NAME`` does: a keypair, its enrolment in the trust
store, and an OAuth2 client bound to it, so the identity can connect and get a token.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError
from security.clients import ClientRegistry
from security.keys import KeyPair, load_keypair, new_keys
from security.tokens import SigningKeyRing
from security.trust import TrustStore

ROUTER_IDENTITY = "router"
ISSUER = "agp-mesh"
AUDIENCE = "agp-mesh"

DEFAULT_POLICY = {
    "version": 1,
    "description": "agp-mesh default policy: admins do anything; agents register and serve "
                   "under their own namespace; clients call agents and use pub/sub.",
    "roles": {
        "admin": {"allow": [{"actions": ["*"], "names": [">"]}]},
        "agent": {"allow": [
            {"actions": ["register"], "names": ["{ns}/*"]},
            {"actions": ["request", "send", "stream"], "names": ["**"]},
            {"actions": ["publish", "subscribe"], "topics": [">"]},
        ]},
        "client": {"allow": [
            {"actions": ["request", "send", "stream"], "names": ["**"]},
            {"actions": ["publish", "subscribe"], "topics": [">"]},
        ], "deny": [{"actions": ["register", "admin"], "names": [">"]}]},
    },
    "bindings": [],
}


def agp_home() -> Path:
    return Path(os.environ.get("AGP_HOME", Path.home() / ".agp"))


@dataclass
class Home:
    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def signing(self) -> Path:
        return self.root / "auth" / "signing.json"

    @property
    def clients(self) -> Path:
        return self.root / "auth" / "clients.json"

    @property
    def revoked_tokens(self) -> Path:
        """Token ids revoked and not yet expired: kept across router restarts."""
        return self.root / "auth" / "revoked_tokens.json"

    @property
    def policy(self) -> Path:
        return self.root / "policies.json"

    def trust(self) -> TrustStore:
        return TrustStore(self.trust_dir)

    def keypair(self, name: str) -> KeyPair:
        return load_keypair(name, self.keys)

    def has_keys(self, name: str) -> bool:
        return (self.keys / f"{name}.key_secret").exists()

    def registry(self) -> ClientRegistry:
        if self.clients.exists():
            return ClientRegistry.load(self.clients)
        return ClientRegistry(path=self.clients)  # picks the file up once it is written

    def keyring(self) -> SigningKeyRing:
        if self.signing.exists():
            return SigningKeyRing.load(self.signing)
        ring = SigningKeyRing()
        self.signing.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ring.save(self.signing)
        return ring


def open_home(root: Path | str | None = None) -> Home:
    home = Home(Path(root) if root is not None else agp_home())
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def ensure_router(home: Home) -> KeyPair:
    """The router's keypair, made and enrolled on first use; the default policy too."""
    if not home.has_keys(ROUTER_IDENTITY):
        new_keys(ROUTER_IDENTITY, home.keys)
    kp = home.keypair(ROUTER_IDENTITY)
    trust = home.trust()
    if not trust.is_trusted(kp.public):
        trust.enroll(ROUTER_IDENTITY, kp.public)
    if not home.policy.exists():
        home.policy.write_text(json.dumps(DEFAULT_POLICY, indent=2) + "\n")
    home.keyring()
    return kp


def enroll_identity(home: Home, name: str, *, roles: tuple[str, ...] = ("client",),
                    namespace: str | None = None, overwrite: bool = False,
                    secret: str | None = None) -> KeyPair:
    """Keypair + trust-store enrolment + OAuth2 client (id = name, with ``secret``, or a
    random one nobody is told: the client then gets its tokens over the mesh) + an RBAC
    binding. With ``secret`` None, a client already bound to this key keeps its secret."""
    trust = home.trust()
    if home.has_keys(name) and not overwrite:
        kp = home.keypair(name)
    else:
        # the trust store refuses a second key for an enrolled name: ask before the
        # keypair is made, or the enrolled one's secret is overwritten and then refused
        held = next((t.public for t in trust.list() if t.name == name), None)
        if held is not None:
            raise ConfigError(f"{name!r} is enrolled with key {held.decode()}: revoke it "
                              f"first (`agp keys revoke {name}`), then make its new keys")
        kp = new_keys(name, home.keys, overwrite=overwrite)
    if not trust.is_trusted(kp.public):
        trust.enroll(name, kp.public)
    reg = home.registry()
    existing = reg.get(name)
    if secret is None and existing is not None and existing.curve_public == kp.public:
        # re-enrolment (`agp up` on every start): keep the secret its owner was shown
        if existing.roles != tuple(roles):
            reg.update(name, roles=roles)
            reg.save(home.clients)
    else:
        reg.register(name, secret or secrets.token_urlsafe(24), curve_public=kp.public,
                     roles=roles)
        home.clients.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        reg.save(home.clients)
    if namespace is not None:
        bind(home, name, roles, {"ns": namespace})
    return kp


def bind(home: Home, subject: str, roles: tuple[str, ...], variables: dict[str, str]) -> None:
    """Add (or replace) the policy binding of ``subject``; the router reloads it live."""
    if not home.policy.exists():
        home.policy.write_text(json.dumps(DEFAULT_POLICY, indent=2) + "\n")
    doc = json.loads(home.policy.read_text())
    if not isinstance(doc.get("bindings"), list):
        raise ConfigError(f"{home.policy}: no bindings list")
    doc["bindings"] = [b for b in doc["bindings"] if b.get("subject") != subject]
    doc["bindings"].append({"subject": subject, "roles": list(roles), "vars": variables})
    tmp = home.policy.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, home.policy)


def client_security(identity: str, *, home: Home | None = None,
                    server_key: str | None = None) -> object:
    """The ``mesh.core.Security`` of an enrolled identity: its keypair and the router's key
    (``AGP_SERVER_KEY``, or the router key stored in this home)."""
    from mesh.core import Security
    from security.keys import load_public

    home = home or open_home()
    if not home.has_keys(identity):
        raise ConfigError(f"no keys for {identity!r} in {home.keys}: run `agp keys new {identity}`")
    kp = home.keypair(identity)
    server = server_key or os.environ.get("AGP_SERVER_KEY")
    server_public = server.encode() if server else load_public(ROUTER_IDENTITY, home.keys)
    return Security(kp.public, kp.secret, server_public)
