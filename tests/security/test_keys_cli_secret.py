"""`agp keys new NAME` makes an OAuth2 client whose secret it shows once, so a program
that is not on the mesh can get a token over HTTP (RFC 6749 s4.4) from a real router."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agents.procs import router_process
from security import jwt
from tests.security.test_client_secret_lifecycle import token_with

ROOT = Path(__file__).resolve().parents[2]


def test_the_secret_agp_keys_new_shows_gets_a_token_over_http(spawn, tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "keys", "--home", str(home),
                          "new", "carol"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True).stdout
    secret = out.rsplit(": ", 1)[1].strip()
    assert "shown once" in out
    assert len(secret) >= 16
    router = spawn(router_process(extra=["--auth-port", "0", "--home", str(home)]))
    url = router.ready_info["auth"] + "/oauth2/token"

    status, body = token_with(url, "carol", secret)
    assert status == 200, body
    assert jwt.decode_unverified(body["access_token"])[1]["sub"] == "carol"
    assert token_with(url, "carol", secret[:-1] + ("A" if secret[-1] != "A" else "B"))[0] == 401
