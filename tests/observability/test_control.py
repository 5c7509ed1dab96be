"""The control plane as a separate process against a real secure mesh: the status API, live
events, the dashboard page, and admin actions gated by a bearer token and RBAC."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.procs import ManagedProcess
from security.home import Home, enroll_identity
from tests.helpers import wait_for
from tests.observability.obs_helpers import http, make_run, mesh_token


def _status(url: str) -> dict[str, Any]:
    code, body = http("GET", url + "/api/status")
    assert code == 200
    return body


def test_status_lists_services_and_instances(control_plane: Callable[..., ManagedProcess],
                                             start_echo: Callable[..., ManagedProcess]) -> None:
    start_echo(namespace="test/ctl", instance="alpha", capacity=8)
    start_echo(namespace="test/ctl", instance="beta", capacity=4)
    url = control_plane().ready_info["url"]
    status = wait_for(lambda: (s := _status(url)) and any(
        x["service"] == "test/ctl/echo" and len(x["instances"]) == 2 for x in s["services"])
        and s, 15, message="both instances in /api/status")
    assert status["ok"]
    assert status["error"] is None
    svc = next(x for x in status["services"] if x["service"] == "test/ctl/echo")
    assert sorted(i["name"] for i in svc["instances"]) == ["test/ctl/echo/alpha",
                                                           "test/ctl/echo/beta"]
    assert svc["capacity"] == 12
    assert svc["inflight"] == 0
    assert svc["load"] == 0.0
    assert status["router"]["router_id"]
    assert status["router"]["peers"] >= 3
    assert status["rtt_ms"] is not None
    assert status["rtt_ms"] > 0
    assert status["workflows"] is None  # no store configured
    # live: the first server-sent event is a full snapshot
    with urllib.request.urlopen(url + "/api/events", timeout=10) as r:  # noqa: S310
        assert r.headers["Content-Type"] == "text/event-stream"
        line = r.readline()
    assert line.startswith(b"data: ")
    assert "test/ctl/echo" in {x["service"] for x in json.loads(line[6:])["services"]}
    code, page = http("GET", url + "/")
    assert code == 200
    assert "test/ctl/echo/alpha" in page
    for asset in ("/static/app.js", "/static/style.css"):
        assert http("GET", url + asset)[0] == 200
    assert http("GET", url + "/static/../control.py")[0] == 404


def test_admin_actions_need_an_admin_token(control_plane: Callable[..., ManagedProcess],
                                           router: ManagedProcess, mesh_home: Home,
                                           start_echo: Callable[..., ManagedProcess],
                                           tmp_path: Path) -> None:
    start_echo(namespace="test/adm", instance="one")
    store = f"sqlite:///{tmp_path}/runs.db"
    run_id = make_run(store, "admin_demo")
    url = control_plane(store=store).ready_info["url"]
    ep = router.ready_info["router"]
    enroll_identity(mesh_home, "plain-client", roles=("client",))
    user_token = mesh_token(ep, "plain-client")
    admin_token = mesh_token(ep, "tester")  # the fixtures' identity has the admin role

    cancel = url + "/api/admin/cancel"
    code, body = http("POST", cancel, {"run": run_id})
    assert code == 401
    assert "token" in body["error"]
    assert http("POST", cancel, {"run": run_id}, token="not.a.jwt")[0] == 401
    code, body = http("POST", cancel, {"run": run_id}, token=user_token)
    assert code == 403
    assert "plain-client" in body["error"]
    wf = wait_for(lambda: _status(url)["workflows"], 10, message="workflows listed")
    assert [r["state"] for r in wf if r["id"] == run_id] == ["running"]  # refusals changed nothing

    drain = url + "/api/admin/drain"
    instance = {"instance": "test/adm/echo/one"}
    assert http("POST", drain, instance)[0] == 401
    assert http("POST", drain, instance, token=user_token)[0] == 403

    code, body = http("POST", cancel, {"run": run_id}, token=admin_token)
    assert code == 200, body
    assert body == {"run": run_id, "state": "cancelled", "by": "tester"}
    wait_for(lambda: [r["state"] for r in _status(url)["workflows"] if r["id"] == run_id]
             == ["cancelled"], 10, message="cancel visible on the dashboard")
    assert http("POST", cancel, {"run": "ffffffffffff"}, token=admin_token)[0] == 404
    assert http("POST", url + "/api/admin/reboot", {}, token=admin_token)[0] == 404
    code, body = http("POST", drain, instance, token=admin_token)
    assert code == 200, body
    wait_for(lambda: any(i["name"] == "test/adm/echo/one" and not i["accepting"]
                         for s in _status(url)["services"] for i in s["instances"]),
             10, message="instance drained")


def test_embedded_in_the_router_process() -> None:
    """`embedded()` reads an in-process Router directly; without a verifier, admin is off."""
    import threading

    from prometheus_client import CollectorRegistry

    from router.config import RouterConfig
    from router.control import embedded
    from router.server import Router

    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0"))
    r.start()
    loop = threading.Thread(target=r.run, daemon=True)
    loop.start()
    ctl = embedded(r, port=0, interval=0.1, registry=CollectorRegistry())
    try:
        status = wait_for(lambda: (s := _status(ctl.url))["ok"] and s, 10, message="status")
        assert status["router"]["router_id"] == r.config.router_id
        assert status["services"] == []
        assert status["rtt_ms"] is None
        code, body = http("POST", ctl.url + "/api/admin/drain",
                          {"instance": "a/b/c/d"}, token="x")
        assert code == 403
        assert "disabled" in body["error"]
    finally:
        ctl.stop()
        r.stop()
        loop.join(5)
    assert not loop.is_alive()


def test_a_token_the_router_revoked_is_refused_by_the_control_plane_apart(
        control_plane: Callable[..., ManagedProcess], router: ManagedProcess,
        start_echo: Callable[..., ManagedProcess]) -> None:
    """The control plane runs in its own process: it reads the router's revocations from
    its home (auth/revoked_tokens.json) as they change, not only the signing keys."""
    import base64

    from mesh import Mesh

    start_echo(namespace="test/rvk", instance="one")
    url = control_plane().ready_info["url"]
    ep = router.ready_info["router"]
    admin_token = mesh_token(ep, "tester")
    drain = url + "/api/admin/drain"
    unknown = {"instance": "test/rvk/echo/none"}
    assert http("POST", drain, unknown, token=admin_token)[0] == 404  # past the token check
    payload = admin_token.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    with Mesh.connect(ep, identity="tester") as m:
        assert m.request("agp/system/auth", "revoke", {"jti": jti}) == {"revoked": jti}
    code, body = http("POST", drain, unknown, token=admin_token)
    assert code == 401, body
    assert "revoked" in body["error"]
    fresh = mesh_token(ep, "tester")  # another token of the same admin still works
    assert http("POST", drain, unknown, token=fresh)[0] == 404
