"""`agp keys revoke NAME` holds on the router's token endpoint from the next request on, not
from the router's next heartbeat (when its trust snapshot is refreshed): the endpoint looks
at the revocation file (one stat) before it signs, and reads the store again when it changed.

The router here is what ``secure_router`` assembles (ZAP, the token service over HTTP, the
trust store of AGP_HOME) with no routing loop, so no heartbeat refreshes the trust store
behind the test's back: what the endpoint refuses, it refused by its own look."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from security.cli import main as keys_cli
from security.home import Home, enroll_identity
from security.server import SecureRouter, secure_router
from security.token_http import TOKEN_PATH
from tests.security.token_client import token_with

SECRET = "dave-secret-as-agp-keys-new-showed-it"


@pytest.fixture
def parts(mesh_home: Home) -> Iterator[SecureRouter]:
    ctx = zmq.Context()
    parts = secure_router(mesh_home.root, auth_port=0, context=ctx)
    try:
        yield parts
    finally:
        parts.stop()
        ctx.destroy(linger=0)


def test_a_key_revoked_gets_no_token_on_the_very_next_request(
        mesh_home: Home, parts: SecureRouter) -> None:
    enroll_identity(mesh_home, "dave", secret=SECRET)
    url = parts.http.url + TOKEN_PATH
    status, body = token_with(url, "dave", SECRET)
    assert status == 200, body
    assert keys_cli(["--home", str(mesh_home.root), "revoke", "dave"]) == 0
    status, body = token_with(url, "dave", SECRET)  # no heartbeat in between
    assert (status, body.get("error")) == (400, "invalid_grant"), body
    assert parts.access.trust.is_revoked(mesh_home.keypair("dave").public)


def test_an_unchanged_revocation_file_is_not_read_again(
        mesh_home: Home, parts: SecureRouter) -> None:
    enroll_identity(mesh_home, "dave", secret=SECRET)
    url = parts.http.url + TOKEN_PATH
    assert token_with(url, "dave", SECRET)[0] == 200
    trust = parts.access.trust
    snapshot = trust._snap
    for _ in range(3):
        assert token_with(url, "dave", SECRET)[0] == 200
    assert trust._snap is snapshot  # a stat per request, no reload
    keys_cli(["--home", str(mesh_home.root), "revoke", "dave"])
    assert token_with(url, "dave", SECRET)[0] == 400
    assert trust._snap is not snapshot
