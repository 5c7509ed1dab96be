"""The secret `agp keys new NAME` shows keeps working: after `agp up` re-enrols every
identity (secret=None), and on a token endpoint that was already running when it was made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.procs import ManagedProcess, router_process
from security import jwt
from security.home import AUDIENCE, ISSUER, Home, enroll_identity, ensure_router, open_home
from security.token_http import TOKEN_PATH, TokenHTTPServer
from security.tokens import TokenService
from tests.security.token_client import token_with

KNOWN = "the-secret-agp-keys-new-printed"
ROTATED = "a-rotated-secret-of-enough-length"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = open_home(tmp_path / "home")
    ensure_router(h)
    return h


# ---- 1: re-enrolment keeps the secret ----------------------------------------------------

def test_reenrol_without_secret_keeps_the_shown_secret(home: Home) -> None:
    kp = enroll_identity(home, "carol", roles=("agent",), namespace="acme/ml", secret=KNOWN)
    # what MeshLaunch.prepare_home does on every `agp up`
    again = enroll_identity(home, "carol", roles=("agent",), namespace="acme/ml")
    assert again.public == kp.public
    assert home.registry().authenticate("carol", KNOWN) is not None


def test_reenrol_with_other_roles_updates_roles_and_keeps_the_secret(home: Home) -> None:
    enroll_identity(home, "carol", roles=("client",), secret=KNOWN)
    enroll_identity(home, "carol", roles=("agent",), namespace="acme/ml")
    client = home.registry().authenticate("carol", KNOWN)
    assert client is not None
    assert client.roles == ("agent",)


def test_given_secret_replaces_the_old_one(home: Home) -> None:
    enroll_identity(home, "carol", secret=KNOWN)
    enroll_identity(home, "carol", secret=ROTATED)
    reg = home.registry()
    assert reg.authenticate("carol", KNOWN) is None
    assert reg.authenticate("carol", ROTATED) is not None


# ---- 2: a running token endpoint sees clients made after it started ----------------------

@pytest.fixture
def endpoint(home: Home) -> Iterator[tuple[str, TokenService]]:
    service = TokenService(issuer=ISSUER, audience=AUDIENCE, registry=home.registry(),
                           keyring=home.keyring(), trust=home.trust())
    server = TokenHTTPServer(service)
    server.start()
    try:
        yield server.url + TOKEN_PATH, service
    finally:
        server.stop()


def test_running_http_endpoint_accepts_a_client_enrolled_after_start(
        home: Home, endpoint: tuple[str, TokenService]) -> None:
    url, service = endpoint
    assert token_with(url, "dave", KNOWN)[0] == 401  # not enrolled yet
    enroll_identity(home, "dave", secret=KNOWN)
    status, body = token_with(url, "dave", KNOWN)
    assert status == 200, body
    assert jwt.decode_unverified(body["access_token"])[1]["sub"] == "dave"
    # a rotated secret is seen too, and the old one stops working
    enroll_identity(home, "dave", secret=ROTATED)
    assert token_with(url, "dave", ROTATED)[0] == 200
    assert token_with(url, "dave", KNOWN)[0] == 401


def test_wrong_secrets_do_not_reload_an_unchanged_file(
        home: Home, endpoint: tuple[str, TokenService]) -> None:
    url, service = endpoint
    enroll_identity(home, "dave", secret=KNOWN)
    assert token_with(url, "dave", KNOWN)[0] == 200
    reloads = service.registry.reloads
    assert reloads >= 1
    for _ in range(3):
        assert token_with(url, "dave", "not-the-secret-of-dave-at-all")[0] == 401
        assert token_with(url, "nobody", KNOWN)[0] == 401
    assert service.registry.reloads == reloads


def test_a_clients_file_that_no_longer_loads_keeps_the_clients_held(
        home: Home, endpoint: tuple[str, TokenService]) -> None:
    url, service = endpoint
    enroll_identity(home, "dave", secret=KNOWN)
    assert token_with(url, "dave", KNOWN)[0] == 200
    home.clients.write_text("{not json")
    assert token_with(url, "dave", "not-the-secret-of-dave-at-all")[0] == 401
    assert service.registry.reload_errors == 1
    assert token_with(url, "dave", KNOWN)[0] == 200  # the clients held still serve


def test_router_process_serves_secrets_enrolled_while_it_runs(
        spawn: Callable[..., ManagedProcess], home: Home) -> None:
    """What `agp keys new NAME` does (enroll_identity with a fresh secret), against a real
    router process started before it."""
    enroll_identity(home, "carol", secret=KNOWN)  # the clients file exists at start
    router = spawn(router_process(extra=["--auth-port", "0", "--home", str(home.root)]))
    url = router.ready_info["auth"] + TOKEN_PATH
    assert token_with(url, "carol", KNOWN)[0] == 200
    enroll_identity(home, "dave", secret=KNOWN)  # a new identity while the router runs
    status, body = token_with(url, "dave", KNOWN)
    assert status == 200, body
    assert jwt.decode_unverified(body["access_token"])[1]["sub"] == "dave"
    enroll_identity(home, "carol", secret=ROTATED)  # a secret rotated while it runs
    assert token_with(url, "carol", ROTATED)[0] == 200
    assert token_with(url, "carol", KNOWN)[0] == 401
