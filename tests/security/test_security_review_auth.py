"""Review of authentication and keys: what an operator changes while the mesh runs holds at
once, `agp keys new --force` changes nothing when it is refused, and no two frames of an
end-to-end stream share keystream."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.procs import ManagedProcess, router_process
from mesh import Mesh
from mesh.errors import Forbidden
from security import jwt
from security.clients import ClientRegistry
from security.home import AUDIENCE, ISSUER, Home, enroll_identity, ensure_router, open_home
from security.stream_keys import ChunkOpener, ChunkSealer
from security.token_http import TOKEN_PATH, TokenHTTPServer
from security.tokens import TokenService
from tests.security.test_client_secret_lifecycle import token_with

ROOT = Path(__file__).resolve().parents[2]
KNOWN = "the-secret-agp-keys-new-printed"
ROTATED = "a-rotated-secret-of-enough-length"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = open_home(tmp_path / "home")
    ensure_router(h)
    return h


@pytest.fixture
def endpoint(home: Home) -> Iterator[str]:
    """A real HTTP token endpoint on the home's files, started before the changes."""
    enroll_identity(home, "carol", roles=("admin",), secret=KNOWN)
    service = TokenService(issuer=ISSUER, audience=AUDIENCE, registry=home.registry(),
                           keyring=home.keyring(), trust=home.trust())
    server = TokenHTTPServer(service)
    server.start()
    try:
        yield server.url + TOKEN_PATH
    finally:
        server.stop()


def roles_of(body: dict) -> list[str]:
    return jwt.decode_unverified(body["access_token"])[1]["roles"]


# ---- 1: the running token service reads the clients file as it is now -------------------

def test_http_tokens_carry_the_roles_the_clients_file_grants_now(
        home: Home, endpoint: str) -> None:
    status, body = token_with(endpoint, "carol", KNOWN)
    assert status == 200, body
    assert roles_of(body) == ["admin"]
    enroll_identity(home, "carol", roles=("client",))  # demoted (as `agp up` re-enrols)
    status, body = token_with(endpoint, "carol", KNOWN)
    assert status == 200, body
    assert roles_of(body) == ["client"]


def test_http_a_rotated_secret_is_refused_before_the_new_one_is_used(
        home: Home, endpoint: str) -> None:
    assert token_with(endpoint, "carol", KNOWN)[0] == 200
    enroll_identity(home, "carol", secret=ROTATED)  # `agp keys new carol`: a leaked secret
    status, body = token_with(endpoint, "carol", KNOWN)
    assert (status, body["error"]) == (401, "invalid_client")
    assert token_with(endpoint, "carol", ROTATED)[0] == 200


def test_http_a_removed_client_gets_no_token(home: Home, endpoint: str) -> None:
    assert token_with(endpoint, "carol", KNOWN)[0] == 200
    reg = home.registry()
    assert reg.remove("carol")
    reg.save(home.clients)
    status, body = token_with(endpoint, "carol", KNOWN)
    assert (status, body["error"]) == (401, "invalid_client")
    assert ClientRegistry.load(home.clients).get("carol") is None


def test_mesh_tokens_carry_the_roles_the_clients_file_grants_now(
        spawn: Callable[..., ManagedProcess], mesh_home: Home) -> None:
    """The mesh's own token service (``agp/system/auth``) of a real router process."""
    enroll_identity(mesh_home, "ops", roles=("admin",))
    router = spawn(router_process(extra=["--auth-port", "0"]))
    endpoint = router.ready_info["router"]
    with Mesh.connect(endpoint, identity="ops") as m:
        assert m.request("agp/router", "stats")["router_id"] == router.ready_info["router_id"]
    enroll_identity(mesh_home, "ops", roles=("client",))  # demoted while the router runs
    with Mesh.connect(endpoint, identity="ops") as m, pytest.raises(Forbidden):
        m.request("agp/router", "stats")


# ---- 2: `agp keys new NAME --force` on an enrolled identity ------------------------------

def agp_keys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", "keys", "--home", str(home),
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_keys_new_force_on_an_enrolled_name_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    root = tmp_path / "home"
    assert agp_keys(root, "new", "alice").returncode == 0
    h = open_home(root)
    files = {p.name: p.read_bytes() for p in h.keys.glob("alice.*")}
    enrolled = h.keypair("alice").public
    done = agp_keys(root, "new", "alice", "--force")
    assert done.returncode == 2
    assert "revoke" in done.stderr
    assert {p.name: p.read_bytes() for p in h.keys.glob("alice.*")} == files
    assert h.trust().is_trusted(enrolled)
    # the way the error names: revoke, then replace
    assert agp_keys(root, "revoke", "alice").returncode == 0
    assert agp_keys(root, "new", "alice", "--force").returncode == 0
    fresh = h.keypair("alice").public
    assert fresh != enrolled
    assert h.trust().is_trusted(fresh)
    assert h.trust().is_revoked(enrolled)


# ---- 3: the frames of one end-to-end stream chunk ----------------------------------------

def test_frames_of_a_stream_chunk_do_not_share_keystream() -> None:
    key = bytes(range(32))
    head, array = b"\x82\xa1x\xc7" + b"h" * 28, b"the array's own bytes, secret!!!"
    sealed = ChunkSealer(key, 7).seal([head, array])
    xor = bytes(a ^ b for a, b in zip(sealed[0][:16], sealed[1][:16]))
    assert xor != bytes(a ^ b for a, b in zip(head[:16], array[:16]))
    assert ChunkOpener(key, 7).open(sealed) == [head, array]
    # a frame moved to another place of its chunk does not open
    with pytest.raises(Exception, match="tampered"):
        ChunkOpener(key, 7).open([sealed[1], sealed[0]])
