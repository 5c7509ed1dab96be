"""`agp keys new NAME` makes an OAuth2 client whose secret it shows once, so a program
that is not on the mesh can get a token over HTTP (RFC 6749 s4.4) from a real router."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from agents.procs import router_process
from security import jwt

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

    def token_with(password: str) -> tuple[int, dict]:
        creds = base64.b64encode(f"carol:{urllib.parse.quote_plus(password)}".encode())
        req = urllib.request.Request(
            url, data=b"grant_type=client_credentials", method="POST",
            headers={"Authorization": "Basic " + creds.decode(),
                     "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())

    status, body = token_with(secret)
    assert status == 200, body
    assert jwt.decode_unverified(body["access_token"])[1]["sub"] == "carol"
    assert token_with(secret[:-1] + ("A" if secret[-1] != "A" else "B"))[0] == 401
