"""Helpers shared by the observability tests: HTTP calls, mesh tokens, workflow runs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http(method: str, url: str, body: Any = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """One HTTP call; returns (status, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def mesh_token(endpoint: str, identity: str) -> str:
    """An access token for ``identity`` from the mesh's token service (agp/system/auth),
    over a connection authenticated with that identity's CURVE key."""
    from mesh import Mesh

    with Mesh.connect(endpoint, identity=identity) as m:
        return str(m.request("agp/system/auth", "token")["access_token"])


def make_run(store_url: str, name: str = "obs_pipeline") -> str:
    """A running workflow run with two pending steps, written straight into the store."""
    from mesh.workflow import load_spec, open_store

    spec = load_spec({"name": name, "steps": {
        "collect": {"agent": "test/m/echo", "action": "echo"},
        "train": {"agent": "test/m/echo", "action": "echo", "depends_on": ["collect"]}}})
    store = open_store(store_url)
    try:
        return store.create_run(spec).id
    finally:
        store.close()
