"""The mesh's own token service (``agp/system/auth``) grants as the HTTP endpoint does: a
client the operator did not allow the client-credentials grant gets no token either way."""

from __future__ import annotations

import pytest

from mesh.errors import Unauthenticated
from security import keys
from security.access import SecureAccess
from security.clients import ClientRegistry
from security.rbac import PolicyStore
from security.tokens import TokenService
from security.trust import TrustStore

SECRET = "s" * 24


@pytest.fixture
def access(tmp_path):
    trust = TrustStore(tmp_path / "trust")
    registry = ClientRegistry(scrypt_n=2**10)
    policy = tmp_path / "policies.json"
    policy.write_text('{"version": 1, "roles": {}, "bindings": []}')
    service = TokenService(issuer="agp", audience="agp-mesh", registry=registry)
    return SecureAccess(trust, service, PolicyStore(policy)), trust, registry


def test_a_client_without_the_grant_gets_no_token_on_the_mesh(access) -> None:
    acc, trust, registry = access
    allowed, barred = keys.generate(), keys.generate()
    for name, pair, grants in (("allowed", allowed, ("client_credentials",)),
                               ("barred", barred, ())):
        trust.enroll(name, pair.public)
        registry.register(name, SECRET, curve_public=pair.public, grant_types=grants)
    assert acc.issue_for_key(allowed.public.decode())["access_token"]
    with pytest.raises(Unauthenticated, match="client_credentials"):
        acc.issue_for_key(barred.public.decode())
