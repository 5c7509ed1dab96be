"""Real mDNS on this host: announce with python-zeroconf, browse, find, trust, fall back.

Multicast works here on loopback and on the host's interface, so these tests use the real
thing: each announces in a mesh of its own (a random ``mesh=`` TXT value) so that other
tests or mesh processes on the host cannot disturb them.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import zmq
from zeroconf import InterfaceChoice, ServiceInfo, Zeroconf
from zmq.utils import z85

from discovery.announcement import SERVICE_TYPE, Announcement, encode_txt
from discovery.mdns import (
    Announcer,
    MdnsStats,
    async_browse_routers,
    async_find_router,
    browse_routers,
    find_router,
    mdns_enabled,
    mdns_interfaces,
    router_endpoint,
)
from mesh.errors import ConfigError, Unavailable

LO = ["127.0.0.1"]


def fresh_key() -> str:
    return zmq.curve_keypair()[0].decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Lab:
    mesh: str
    good_key: str
    rogue_key: str
    good_port: int
    rogue_port: int


@pytest.fixture(scope="module", autouse=True)
def mdns_on() -> Iterator[None]:
    """These tests exercise real mDNS whatever the suite's default (tests/conftest.py turns
    it off for the other tests, so their processes do not announce)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGP_MDNS", "1")
        mp.delenv("AGP_MDNS_INTERFACES", raising=False)
        mp.delenv("AGP_ROUTER", raising=False)
        yield


@pytest.fixture(scope="module")
def lab(mdns_on: None) -> Iterator[Lab]:
    """A trusted router, a rogue router (another key) and a record with a broken TXT."""
    mesh = f"t-{uuid.uuid4().hex[:12]}"
    lab = Lab(mesh, fresh_key(), fresh_key(), free_port(), free_port())
    good = Announcer(role="router", name="acme/routers/good", server_key=lab.good_key,
                     port=lab.good_port, pub_port=lab.good_port + 1, mesh=mesh,
                     instance=f"good-{mesh}", interfaces=LO)
    rogue = Announcer(role="router", name="acme/routers/good", server_key=lab.rogue_key,
                      port=lab.rogue_port, mesh=mesh, instance=f"rogue-{mesh}", interfaces=LO)
    broken_zc = Zeroconf(interfaces=LO)
    broken = ServiceInfo(
        SERVICE_TYPE, f"broken-{mesh}.{SERVICE_TYPE}", port=1, server=f"broken-{mesh}.local.",
        parsed_addresses=LO,
        properties=encode_txt({"txtvers": "1", "role": "router", "name": "x",
                               "key": "not-a-z85-key", "mesh": mesh}),
    )
    try:
        # Probing takes ~1.5 s per service (RFC 6762 s8); announce the three at once.
        with ThreadPoolExecutor(3) as pool:
            for fut in [pool.submit(good.start), pool.submit(rogue.start),
                        pool.submit(broken_zc.register_service, broken)]:
                fut.result(timeout=30)
        yield lab
    finally:
        good.close()
        rogue.close()
        broken_zc.close()


def test_browse_lists_announced_routers_and_drops_broken_records(lab: Lab) -> None:
    stats = MdnsStats()
    found = browse_routers(2.5, mesh=lab.mesh, interfaces=LO, stats=stats)
    by_key = {r.server_key: r for r in found}
    assert set(by_key) == {lab.good_key, lab.rogue_key}  # browse reports claims, unverified
    good = by_key[lab.good_key]
    assert good.endpoint == f"tcp://127.0.0.1:{lab.good_port}"
    assert good.pub_endpoint == f"tcp://127.0.0.1:{lab.good_port + 1}"
    assert (good.role, good.name, good.mesh) == ("router", "acme/routers/good", lab.mesh)
    assert stats.dropped["key"] >= 1  # the broken record was resolved, counted and dropped


def test_find_router_returns_the_pinned_key_only(lab: Lab) -> None:
    start = time.monotonic()
    found = find_router(10.0, pinned_key=lab.good_key, mesh=lab.mesh, interfaces=LO)
    assert found is not None
    assert found.server_key == lab.good_key
    assert found.endpoint == f"tcp://127.0.0.1:{lab.good_port}"
    assert time.monotonic() - start < 10.0  # returned on the match, not at the timeout
    raw = z85.decode(lab.good_key)
    again = find_router(10.0, pinned_key=raw, mesh=lab.mesh, interfaces=LO)
    assert again is not None
    assert again.server_key == lab.good_key


def test_router_with_an_unpinned_key_is_not_returned(lab: Lab) -> None:
    offered: list[str] = []

    def trust(info: Announcement) -> bool:
        offered.append(info.server_key)
        return False

    stats = MdnsStats()
    found = find_router(2.5, pinned_key=fresh_key(), trust=trust, mesh=lab.mesh,
                        interfaces=LO, stats=stats)
    assert found is None
    assert set(offered) == {lab.good_key, lab.rogue_key}  # both were seen, neither trusted
    assert stats.untrusted >= 2


def test_trust_callable_selects_the_router(lab: Lab) -> None:
    found = find_router(10.0, trust=lambda info: info.server_key == lab.rogue_key,
                        mesh=lab.mesh, interfaces=LO)
    assert found is not None
    assert found.port == lab.rogue_port


def test_async_find_and_browse(lab: Lab) -> None:
    async def main() -> tuple[Announcement | None, list[Announcement]]:
        found = await async_find_router(10.0, pinned_key=lab.good_key, mesh=lab.mesh,
                                        interfaces=LO)
        listed = await async_browse_routers(1.5, mesh=lab.mesh, interfaces=LO)
        return found, listed

    found, listed = asyncio.run(main())
    assert found is not None
    assert found.server_key == lab.good_key
    assert lab.good_key in {r.server_key for r in listed}


def test_router_endpoint_prefers_explicit_then_env_then_mdns(lab: Lab) -> None:
    env = {"AGP_ROUTER": "tcp://127.0.0.1:6001"}
    assert router_endpoint("tcp://10.0.0.1:6000", env=env) == "tcp://10.0.0.1:6000"
    assert router_endpoint(env=env) == "tcp://127.0.0.1:6001"
    assert router_endpoint(pinned_key=lab.good_key, mesh=lab.mesh, interfaces=LO, env={},
                           timeout=10.0) == f"tcp://127.0.0.1:{lab.good_port}"
    with pytest.raises(ConfigError):
        router_endpoint(env={"AGP_ROUTER": "tcp://nowhere"})


def test_nothing_announced_means_none_within_the_timeout(mesh_id: str) -> None:
    start = time.monotonic()
    assert router_endpoint(pinned_key=fresh_key(), mesh=mesh_id, interfaces=LO, env={},
                           timeout=0.5) is None
    assert time.monotonic() - start < 3.0


def test_goodbye_removes_a_closed_announcer(mesh_id: str) -> None:
    key = fresh_key()
    zc = Zeroconf(interfaces=LO)
    try:
        with Announcer(role="router", name="acme/r", server_key=key, port=free_port(),
                       mesh=mesh_id, interfaces=LO):
            assert find_router(10.0, pinned_key=key, mesh=mesh_id, zc=zc) is not None
        # The goodbye (TTL 0) makes the shared cache drop it within about a second.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if not browse_routers(0.3, mesh=mesh_id, zc=zc):
                break
        assert browse_routers(0.3, mesh=mesh_id, zc=zc) == []
    finally:
        zc.close()


def test_async_announcer_on_loopback(mesh_id: str) -> None:
    key = fresh_key()

    async def main() -> Announcement | None:
        async with Announcer(role="router", name="acme/r", server_key=key, port=free_port(),
                             mesh=mesh_id, interfaces=LO):
            return await async_find_router(10.0, pinned_key=key, mesh=mesh_id,
                                           interfaces=LO)

    found = asyncio.run(main())
    assert found is not None
    assert found.server_key == key
    assert "127.0.0.1" in found.addresses  # announced on loopback only


def test_mdns_off_switch(mesh_id: str) -> None:
    env = {"AGP_MDNS": "0", "AGP_ROUTER": "tcp://127.0.0.1:6002"}
    assert not mdns_enabled(env)
    assert mdns_enabled({})
    assert mdns_enabled({"AGP_MDNS": "1"})
    announcer = Announcer(role="router", name="acme/r", server_key=fresh_key(), port=5555,
                          mesh=mesh_id, env=env)
    assert announcer.start() is False
    announcer.close()
    start = time.monotonic()
    assert browse_routers(5.0, mesh=mesh_id, env=env) == []
    assert find_router(5.0, pinned_key=fresh_key(), env=env) is None
    assert time.monotonic() - start < 1.0  # off means at once, not after the timeout
    assert router_endpoint(env=env) == "tcp://127.0.0.1:6002"  # the documented fallback
    assert router_endpoint(env={"AGP_MDNS": "off"}, pinned_key=fresh_key()) is None


def test_interface_selection() -> None:
    assert mdns_interfaces(None, {}) is InterfaceChoice.All
    assert mdns_interfaces(None, {"AGP_MDNS_INTERFACES": "loopback"}) == LO
    assert mdns_interfaces(None, {"AGP_MDNS_INTERFACES": "default"}) is InterfaceChoice.Default
    assert mdns_interfaces(None, {"AGP_MDNS_INTERFACES": "127.0.0.1, ::1"}) == ["127.0.0.1",
                                                                                 "::1"]
    assert mdns_interfaces(["10.1.1.1"], {"AGP_MDNS_INTERFACES": "all"}) == ["10.1.1.1"]
    with pytest.raises(ConfigError):
        mdns_interfaces(["eth0"])
    with pytest.raises(ConfigError):
        mdns_interfaces([])


def test_find_router_needs_a_trust_anchor() -> None:
    with pytest.raises(ConfigError):
        find_router(0.1, env={})
    with pytest.raises(ConfigError):
        find_router(0.1, pinned_key="short", env={})


def test_blocking_calls_refuse_to_run_inside_an_event_loop() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError):
            browse_routers(0.1, env={})

    asyncio.run(main())


def test_an_interface_this_host_lacks_is_a_clear_error_not_a_crash() -> None:
    absent = ["10.255.255.1"]  # an address on no interface of this host
    announcer = Announcer(role="router", name="acme/r", server_key=fresh_key(), port=5555,
                          interfaces=absent)
    with pytest.raises(Unavailable):
        announcer.start()
    announcer.close()
    stats = MdnsStats()
    assert browse_routers(0.3, interfaces=absent, stats=stats) == []
    assert stats.dropped["socket"] == 1  # counted, and no zeroconf thread left (leak guard)


def test_a_router_announces_the_address_it_is_bound_to() -> None:
    """Bound to loopback, a router must not announce the host's LAN address (nothing
    listens there); bound to every address, the host's addresses are announced."""
    from discovery.mdns_config import bound_addresses

    assert bound_addresses("tcp://127.0.0.1:7700") == ["127.0.0.1"]
    assert bound_addresses("tcp://10.1.2.3:7700") == ["10.1.2.3"]
    assert bound_addresses("tcp://[::1]:7700") == ["::1"]
    for everywhere in ("tcp://*:7700", "tcp://0.0.0.0:7700", "tcp://[::]:7700"):
        assert bound_addresses(everywhere) is None
