"""Mesh.connect() with no endpoint finds the router on the LAN by mDNS, and only a router
whose announced key is the one the client pins (real zeroconf on loopback)."""

from __future__ import annotations

import secrets

import pytest
import zmq

from agents.procs import router_process
from mesh import Mesh, Unavailable


@pytest.fixture
def lan(monkeypatch, mesh_home):
    monkeypatch.setenv("AGP_MDNS", "1")
    monkeypatch.setenv("AGP_MDNS_INTERFACES", "loopback")
    monkeypatch.setenv("AGP_MESH", "t" + secrets.token_hex(4))  # this test's mesh only
    monkeypatch.delenv("AGP_ROUTER", raising=False)
    return mesh_home


def test_connect_with_no_endpoint_finds_the_router(lan, spawn) -> None:
    r = spawn(router_process(extra=["--auth-port", "0"]))
    with Mesh.connect(timeout=15) as m:
        assert m.request("agp/router", "stats")["router_id"] == r.ready_info["router_id"]


def test_a_router_with_another_key_is_not_used(lan, spawn, monkeypatch) -> None:
    spawn(router_process(extra=["--auth-port", "0"]))
    monkeypatch.setenv("AGP_SERVER_KEY", zmq.curve_keypair()[0].decode())  # pin another key
    with pytest.raises(Unavailable):
        Mesh.connect(timeout=3)


def test_the_router_announces_the_address_it_is_bound_to(lan, spawn) -> None:
    """A router bound to one address announces that one: a client finding it by mDNS
    connects there (127.0.0.2 is loopback too, but not the interface's own 127.0.0.1,
    where nothing listens on that port)."""
    r = spawn(router_process(bind="tcp://127.0.0.2:0", pub_bind="tcp://127.0.0.2:0",
                             extra=["--auth-port", "0"]))
    with Mesh.connect(timeout=15) as m:
        assert m.request("agp/router", "stats")["router_id"] == r.ready_info["router_id"]
        assert m.core.endpoint.startswith("tcp://127.0.0.2:")
