"""Discovery hardening: a per-key record quota, snapshots paged under the router's message
limit, a registry epoch so replicas notice a restart, and mDNS candidates tried in order.

Real components: registry, router and agents as processes, the mesh client over CURVE on
127.0.0.1, zeroconf kept on loopback; the sans-IO pieces are driven directly as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from agents.procs import ManagedProcess, agent_process, router_process
from discovery.announcement import Announcement
from discovery.events import Event, Snapshot, parse_event, parse_snapshot
from discovery.mdns import Announcer, MdnsStats, async_find_router, find_router
from discovery.reach import CONNECT_TIMEOUT, first_answering
from discovery.records import (
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LEN,
    MAX_ENDPOINTS,
    MAX_LABEL_KEY_LEN,
    MAX_LABEL_VALUE_LEN,
    MAX_LABELS,
    Registration,
)
from discovery.replica import ApplyResult, Replica
from discovery.service import EVENTS_TOPIC, REGISTRY_SERVICE, Registry
from discovery.snapshots import (
    MIN_PAGE_BYTES,
    PAGE_BYTES,
    PAGE_OVERHEAD,
    CursorExpired,
    SnapshotPages,
    fetch_snapshot,
)
from discovery.table import DEFAULT_MAX_PER_KEY, KeyQuotaExceeded, RegistryTable
from mesh import AsyncMesh, DeadlineExceeded, Forbidden, Mesh, NoSuchService, Unavailable
from mesh.errors import Malformed, Overloaded, TooLarge
from security.home import Home, ensure_router
from tests.helpers import wait_for

MakeReg = Callable[..., Registration]
LO = ["127.0.0.1"]


def wire(obj: Any) -> Any:
    """What the other side decodes: a msgpack round trip."""
    return msgpack.unpackb(msgpack.packb(obj))


def big_labels(tag: str = "") -> dict[str, str]:
    """32 labels of 255 characters: a record of about 9 KiB."""
    return {f"k{i}{tag}": "v" * MAX_LABEL_VALUE_LEN for i in range(MAX_LABELS)}


# -- 1. a quota per key ---------------------------------------------------------------------

def test_one_key_holds_at_most_the_quota_and_a_refusal_changes_nothing(
        make_reg: MakeReg, key: str, other_key: str) -> None:
    table = RegistryTable(ttl=60.0)
    assert table.max_per_key == DEFAULT_MAX_PER_KEY == 1_000
    for i in range(DEFAULT_MAX_PER_KEY):
        assert table.register(make_reg(instance=f"i{i}"), now=0.0) is not None
    seq, size = table.seq, len(table)
    with pytest.raises(KeyQuotaExceeded, match="limit per key") as refused:
        table.register(make_reg(instance="over"), now=1.0)
    assert isinstance(refused.value, Forbidden)  # not Overloaded: no retry, no breaker trip
    assert (table.seq, len(table), table.held_by(key)) == (seq, size, DEFAULT_MAX_PER_KEY)
    assert table.get("acme/ml/trainer", "over") is None
    assert table.refused == {"key_quota": 1}
    # what the key holds can still be refreshed and updated; other keys are not affected
    assert table.register(make_reg(instance="i0"), now=1.0) is None
    assert table.register(make_reg(instance="i0", weight=7), now=1.0) is not None
    assert table.register(make_reg(instance="theirs", public_key=other_key), now=1.0)
    # a record let go (or expired) makes room again
    table.deregister("acme/ml/trainer", "i1", now=1.0, key=key)
    assert table.register(make_reg(instance="over"), now=1.0) is not None
    assert len(table.expire(now=100.0)) == DEFAULT_MAX_PER_KEY + 1
    assert table.held_by(key) == table.held_by(other_key) == 0


def test_the_service_counts_refused_registrations_by_reason(make_reg: MakeReg,
                                                             other_key: str) -> None:
    registry = Registry()
    registry.table = RegistryTable(max_per_key=1)
    registry.register(make_reg(instance="a").to_wire(), None)  # type: ignore[arg-type]
    with pytest.raises(KeyQuotaExceeded):
        registry.register(make_reg(instance="b").to_wire(), None)  # type: ignore[arg-type]
    with pytest.raises(Forbidden):  # the instance is another key's
        registry.register(make_reg(instance="a", public_key=other_key).to_wire(),
                          None)  # type: ignore[arg-type]
    assert registry.dropped == {"register_key_quota": 1, "register_instance_taken": 1}
    assert [r.instance for r in registry.table.list()] == ["a"]


@pytest.fixture
def registry(spawn: Callable[..., ManagedProcess], router: ManagedProcess,
             enroll: Callable[..., str]) -> ManagedProcess:
    enroll("registry", "agp/system")
    return spawn(agent_process("discovery.service", router.ready_info["router"],
                               name="registry",
                               extra=["--identity", "registry", "--metrics-port", "0"]))


def _metric(port: int, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r'agp_agent_dropped_total\{[^}]*reason="' + reason + r'"[^}]*\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_a_client_key_past_its_quota_is_refused_over_the_mesh(
        router: ManagedProcess, registry: ManagedProcess, mesh_home: Home) -> None:
    key = mesh_home.keypair("tester").public.decode()
    name = "test/ns/quota"

    def record(i: int) -> dict[str, Any]:
        return {"name": name, "instance": f"q{i}", "public_key": key}

    async def main() -> list[Any]:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            for start in range(0, DEFAULT_MAX_PER_KEY, 250):
                await asyncio.gather(*[m.request_nowait(REGISTRY_SERVICE, "register",
                                                        record(i), timeout=30)
                                       for i in range(start, start + 250)])
            # one burst, handled in order by the registry: the leases are all fresh (3 s)
            # when the one over the quota arrives, whatever the load on this machine
            refresh = [m.request_nowait(REGISTRY_SERVICE, "register", record(i), timeout=30)
                       for i in range(DEFAULT_MAX_PER_KEY)]
            over = m.request_nowait(REGISTRY_SERVICE, "register",
                                    record(DEFAULT_MAX_PER_KEY), timeout=30)
            found = m.request_nowait(REGISTRY_SERVICE, "lookup", {"name": name}, timeout=30)
            await asyncio.gather(*refresh)
            return await asyncio.gather(over, found, return_exceptions=True)

    over, found = asyncio.run(main())
    assert isinstance(over, Forbidden), over
    assert "limit per key" in over.message
    assert len(found) == DEFAULT_MAX_PER_KEY  # what the key held is untouched
    assert f"q{DEFAULT_MAX_PER_KEY}" not in {r["instance"] for r in found}
    port = registry.ready_info["metrics_port"]
    assert wait_for(lambda: _metric(port, "register_key_quota") == 1.0,
                    message="the refusal counted by reason")


# -- 3. the registry's epoch ----------------------------------------------------------------

def _events(table: RegistryTable, make_reg: MakeReg, names: list[str]) -> list[Event]:
    out = []
    for n in names:
        ev = table.register(make_reg(instance=n), now=0.0)
        assert ev is not None
        out.append(parse_event(wire(ev.to_wire())))
    return out


def test_events_and_snapshots_carry_the_epoch_of_the_registry_start(make_reg: MakeReg) -> None:
    a, b = RegistryTable(), RegistryTable()
    assert a.epoch != b.epoch
    assert re.fullmatch(r"[0-9a-f]{16}", a.epoch)
    (ev,) = _events(a, make_reg, ["x"])
    assert ev.epoch == a.epoch
    assert parse_snapshot(wire(a.snapshot().to_wire())).epoch == a.epoch
    seq, records = a.snapshot()  # still unpacks as it did
    assert (seq, len(records)) == (1, 1)
    with pytest.raises(Malformed):
        parse_event({**ev.to_wire(), "epoch": "x" * 33})
    with pytest.raises(Malformed):
        parse_event({**ev.to_wire(), "epoch": 5})


def test_a_new_epoch_makes_the_replica_forget_and_resync(make_reg: MakeReg) -> None:
    old = RegistryTable()
    _events(old, make_reg, ["stay", "gone", "x", "y"])
    replica = Replica()
    assert replica.apply_snapshot(parse_snapshot(wire(old.snapshot().to_wire())))
    assert (replica.seq, len(replica)) == (4, 4)
    late_old = _events(old, make_reg, ["z"])[0]  # seq 5 of the dead registry, delivered late

    new = RegistryTable()  # the registry restarted: its numbers begin again
    (join,) = _events(new, make_reg, ["stay"])
    assert join.seq == 1 <= replica.seq  # without the epoch: a "duplicate", ignored
    assert replica.apply(join) is ApplyResult.RESTARTED
    assert replica.needs_resync
    assert not replica.in_sync
    assert len(replica) == 0
    assert replica.missing() is None  # no range of events will do: a snapshot is needed
    assert replica.apply(late_old) is ApplyResult.STALE  # never taken for a second restart
    stale_snapshot = parse_snapshot(wire(old.snapshot().to_wire()))
    assert replica.apply_snapshot(stale_snapshot) is False  # answered by the dead one
    assert replica.needs_resync
    (later,) = _events(new, make_reg, ["more"])
    assert replica.apply(later) is ApplyResult.BUFFERED
    snap = Snapshot(1, (join.record,), new.epoch)  # taken between the two joins
    assert replica.apply_snapshot(snap)
    assert replica.in_sync
    assert not replica.needs_resync
    assert [r.instance for r in replica.records()] == ["more", "stay"]
    assert (replica.epoch, replica.seq, replica.restarts, replica.stale) == (new.epoch, 2, 1, 2)


def test_events_without_an_epoch_still_apply(make_reg: MakeReg) -> None:
    table = RegistryTable()
    events = _events(table, make_reg, ["a", "b"])
    replica = Replica()
    replica.apply_snapshot(Snapshot(1, (events[0].record,)))  # from a registry without epochs
    assert replica.apply(events[1]) is ApplyResult.APPLIED
    assert replica.epoch == table.epoch
    assert len(replica) == 2


def _instances(m: Mesh, name: str = "test/ns/echo") -> list[str] | None:
    try:
        return sorted(r["instance"] for r in m.request(REGISTRY_SERVICE, "lookup",
                                                       {"name": name}, timeout=2))
    except (NoSuchService, Unavailable, DeadlineExceeded):
        return None


def test_a_replica_notices_a_real_registry_restart_and_drops_what_it_lost(
        router: ManagedProcess, registry: ManagedProcess, start_echo: Callable[..., Any],
        spawn: Callable[..., ManagedProcess]) -> None:
    start_echo(instance="stay")
    gone = start_echo(instance="gone")
    with Mesh.connect(router.ready_info["router"]) as m:
        def call(action: str, data: Any) -> Any:
            return m.request(REGISTRY_SERVICE, action, data, timeout=5)

        wait_for(lambda: _instances(m) == ["gone", "stay"], message="both registered")
        replica = Replica()
        sub = m.subscribe(EVENTS_TOPIC)
        assert replica.apply_snapshot(fetch_snapshot(call))
        first_epoch = replica.epoch
        assert sorted(r.instance for r in replica.records()) == ["gone", "stay"]
        assert replica.seq >= 2
        registry.kill()  # the registry and an agent die together: no LEAVE is ever sent
        gone.kill()
        spawn(agent_process("discovery.service", router.ready_info["router"],
                            name="registry2", extra=["--identity", "registry"]))
        deadline = time.monotonic() + 30
        for _ in range(200):  # bounded: events of one restart
            if replica.in_sync and replica.epoch != first_epoch:
                break
            left = deadline - time.monotonic()
            assert left > 0, f"no resync after the restart: {replica.records()}"
            try:
                replica.apply(parse_event(sub.get(timeout=min(1.0, left)).data))
            except DeadlineExceeded:
                continue
            if replica.needs_resync:
                replica.apply_snapshot(fetch_snapshot(call))
        assert replica.in_sync
        assert replica.epoch != first_epoch
        assert replica.restarts == 1
        assert [r.instance for r in replica.records()] == ["stay"]  # "gone" is not kept


# -- 2. snapshots in pages ------------------------------------------------------------------

def test_pages_stay_under_the_budget_and_add_up_to_one_frozen_state(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=60.0)
    for i in range(40):
        table.register(make_reg(instance=f"i{i}", labels=big_labels()), now=0.0)
    pages = SnapshotPages()
    now = 1.0
    page = pages.page(None, table.snapshot, now)
    got = list(page["records"])
    sizes = [len(msgpack.packb(page))]
    table.register(make_reg(instance="later"), now=now)  # after the freeze: not in the pages
    table.deregister("acme/ml/trainer", "i39", now=now)
    for _ in range(100):
        if "next" not in page:
            break
        page = pages.page(wire({"cursor": page["next"]}), table.snapshot, now)
        assert page["seq"] == 40
        assert page["epoch"] == table.epoch
        got.extend(page["records"])
        sizes.append(len(msgpack.packb(page)))
    assert "next" not in page
    assert len(pages) == 0
    assert len(sizes) > 4
    assert max(sizes) <= PAGE_BYTES
    assert sorted(r["instance"] for r in got) == sorted(f"i{i}" for i in range(40))
    with pytest.raises(TooLarge, match="more pages follow"):  # never one page for the table
        parse_snapshot(wire(pages.page(None, table.snapshot, now)))


def test_a_record_at_every_cap_fits_the_smallest_page(key: str) -> None:
    biggest = Registration(
        name="/".join(["a" * 63] * 4), instance="i" * 64, public_key=key,
        endpoints=tuple(f"tcp://{'h' * 63}.{'h' * 63}.{'h' * 63}.{'h' * 61}:6550{i}"
                        for i in range(MAX_ENDPOINTS)),
        capabilities=tuple(f"{i:02d}" + "c" * (MAX_CAPABILITY_LEN - 2)
                           for i in range(MAX_CAPABILITIES)),
        version="v" * 32, capacity=1_000_000, weight=65_535,
        labels={f"{i:02d}" + "k" * (MAX_LABEL_KEY_LEN - 2): "v" * MAX_LABEL_VALUE_LEN
                for i in range(MAX_LABELS)},
    ).validated()
    assert len(msgpack.packb({**biggest.to_wire(), "age": 1e9})) + PAGE_OVERHEAD < MIN_PAGE_BYTES


def test_cursors_are_bounded_checked_and_expire(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=60.0)
    for i in range(10):
        table.register(make_reg(instance=f"i{i}", labels=big_labels()), now=0.0)
    drops: list[str] = []
    pages = SnapshotPages(max_open=4, per_caller=2, ttl=5.0, on_drop=drops.append)
    firsts = [pages.page({"page_bytes": 1}, table.snapshot, 0.0, caller=b"c%d" % (i // 3))
              for i in range(6)]  # two callers, three fetches each: each keeps its two
    assert len(pages) == 4
    assert pages.evicted == 2
    assert drops.count("snapshot_evicted") == 2
    with pytest.raises(CursorExpired):  # evicted by its own caller's newer fetch
        pages.page({"cursor": firsts[0]["next"]}, table.snapshot, 0.0)
    with pytest.raises(Overloaded):  # every slot held: a third caller waits, evicts nobody
        pages.page({"page_bytes": 1}, table.snapshot, 0.0, caller=b"c9")
    assert len(pages) == 4
    assert drops.count("snapshot_busy") == 1
    assert pages.page({"cursor": firsts[5]["next"]}, table.snapshot, 1.0)["records"]
    with pytest.raises(CursorExpired) as expired:  # unused for longer than the ttl
        pages.page({"cursor": firsts[4]["next"]}, table.snapshot, 60.0)
    assert expired.value.details["reason"] == "cursor_expired"
    for bad in ({"cursor": "no-dot"}, {"cursor": "x" * 65}, {"cursor": 7},
                {"page_bytes": True}, "a string"):
        with pytest.raises(Malformed):
            pages.page(bad, table.snapshot, 60.0)
    with pytest.raises(CursorExpired):
        pages.page({"cursor": "0123456789abcdef.999"}, table.snapshot, 60.0)


def test_fetch_snapshot_starts_again_when_its_cursor_expires(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=60.0)
    for i in range(10):
        table.register(make_reg(instance=f"i{i}", labels=big_labels()), now=0.0)
    pages = SnapshotPages()
    calls: list[Any] = []

    def request(action: str, data: Any) -> Any:
        assert action == "snapshot"
        calls.append(data)
        if len(calls) == 2:  # the registry forgot the cursor once (restart, eviction)
            raise CursorExpired()
        return wire(pages.page(wire(data), table.snapshot, 0.0))

    snap = fetch_snapshot(request, page_bytes=MIN_PAGE_BYTES)
    assert sorted(r.instance for r in snap.records) == sorted(f"i{i}" for i in range(10))
    assert (snap.seq, snap.epoch) == (10, table.epoch)
    assert "cursor" not in calls[2]  # started again from the first page


@pytest.fixture
def small_router(spawn: Callable[..., ManagedProcess], mesh_home: Home) -> ManagedProcess:
    """A router whose message limit is 100 kB (the default is 64 MiB)."""
    return spawn(router_process(extra=["--auth-port", "0", "--max-message-bytes", "100000"]))


@pytest.fixture
def small_registry(spawn: Callable[..., ManagedProcess], small_router: ManagedProcess,
                   enroll: Callable[..., str]) -> ManagedProcess:
    enroll("registry", "agp/system")
    return spawn(agent_process("discovery.service", small_router.ready_info["router"],
                               name="registry", extra=["--identity", "registry"]))


@pytest.fixture
def big_table(small_router: ManagedProcess, small_registry: ManagedProcess,
              mesh_home: Home) -> Iterator[list[str]]:
    """40 records of ~9 KiB (360 kB in all, over the router's limit), kept alive by a
    heartbeat thread as agents keep theirs."""
    key = mesh_home.keypair("tester").public.decode()
    names = [f"b{i}" for i in range(40)]
    stop = threading.Event()
    with Mesh.connect(small_router.ready_info["router"]) as m:
        for n in names:
            m.request(REGISTRY_SERVICE, "register", {"name": "test/ns/big", "instance": n,
                                                     "public_key": key,
                                                     "labels": big_labels()})

        def keep() -> None:
            for _ in range(600):  # bounded: at most 5 minutes of heartbeats
                if stop.wait(0.5):
                    return
                for n in names:
                    m.request(REGISTRY_SERVICE, "register", {
                        "name": "test/ns/big", "instance": n, "public_key": key,
                        "labels": big_labels()})

        keeper = threading.Thread(target=keep, name="test-keeper")
        keeper.start()
        try:
            yield names
        finally:
            stop.set()
            keeper.join(30)
    assert not keeper.is_alive()


def test_a_table_over_the_message_limit_syncs_page_by_page(
        small_router: ManagedProcess, big_table: list[str]) -> None:
    with Mesh.connect(small_router.ready_info["router"]) as m:
        snap = fetch_snapshot(lambda a, d: m.request(REGISTRY_SERVICE, a, d, timeout=5))
        replica = Replica()
        assert replica.apply_snapshot(snap)
        assert sorted(r.instance for r in replica.lookup("test/ns/big")) == sorted(big_table)
        assert len(msgpack.packb(snap.to_wire())) > 100_000  # one message would be refused
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "discover", "--endpoint",
                          small_router.ready_info["router"], "--json"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {r["instance"] for r in json.loads(out.stdout) if r["name"] == "test/ns/big"}
    assert listed == set(big_table)


# -- 4. mDNS: the candidates in order, until one answers -------------------------------------

def _lan_address() -> str:
    """One of this host's own non-loopback IPv4 addresses: reachable only where something
    listens on it (a socket bound to 127.0.0.1 does not: refused, and nothing leaves the
    host). An mDNS record prefers such an address to loopback."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not ipaddress.ip_address(ip.ip).is_loopback:
                return str(ip.ip)
    pytest.skip("this host has no non-loopback IPv4 address")


@pytest.fixture
def zmq_listener() -> Iterator[int]:
    """A ROUTER socket on 127.0.0.1 (it greets as a router does); its port."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    try:
        yield sock.bind_to_random_port("tcp://127.0.0.1")
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.fixture
def mdns_on(monkeypatch: pytest.MonkeyPatch, mesh_id: str) -> str:
    monkeypatch.setenv("AGP_MDNS", "1")
    monkeypatch.setenv("AGP_MDNS_INTERFACES", "loopback")
    monkeypatch.setenv("AGP_MESH", mesh_id)
    monkeypatch.delenv("AGP_ROUTER", raising=False)
    return mesh_id


def _announce(mesh: str, key: str, port: int, addresses: list[str], tag: str) -> Announcer:
    a = Announcer(role="router", name="acme/routers/r", server_key=key, port=port, mesh=mesh,
                  instance=f"{tag}-{mesh}", interfaces=LO, addresses=addresses)
    a.start()
    return a


def test_an_address_that_does_not_answer_is_passed_over_for_the_next(
        mdns_on: str, zmq_listener: int, key: str) -> None:
    lan = _lan_address()
    with _announce(mdns_on, key, zmq_listener, [lan, "127.0.0.1"], "two-addrs"):
        stats = MdnsStats()
        found = find_router(10.0, pinned_key=key, mesh=mdns_on, interfaces=LO, stats=stats)
        assert found is not None
        assert set(found.addresses) == {lan, "127.0.0.1"}
        assert found.endpoint == f"tcp://127.0.0.1:{zmq_listener}"
        assert stats.unreachable == 0

        async def find() -> Announcement | None:
            return await async_find_router(10.0, pinned_key=key, mesh=mdns_on, interfaces=LO)

        found = asyncio.run(find())
        assert found is not None
        assert found.endpoint == f"tcp://127.0.0.1:{zmq_listener}"


def test_a_record_that_does_not_answer_is_passed_over_for_another(
        mdns_on: str, zmq_listener: int, key: str) -> None:
    with socket.socket() as s:  # a port nobody listens on: a router since gone
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = _announce(mdns_on, key, dead_port, LO, "dead")
    try:
        with _announce(mdns_on, key, zmq_listener, LO, "live"):
            for _ in range(3):  # whichever record resolves first, the live one is returned
                found = find_router(10.0, pinned_key=key, mesh=mdns_on, interfaces=LO)
                assert found is not None
                assert found.endpoint == f"tcp://127.0.0.1:{zmq_listener}"
    finally:
        dead.close()
    # alone and silent, a trusted record is still returned as announced, after a short wait
    with _announce(mdns_on, key, dead_port, LO, "alone"):
        stats = MdnsStats()
        started = time.monotonic()
        found = find_router(10.0, pinned_key=key, mesh=mdns_on, interfaces=LO, stats=stats)
        assert found is not None
        assert found.endpoint == f"tcp://127.0.0.1:{dead_port}"
        assert stats.unreachable >= 1
        assert time.monotonic() - started < 10.0


def test_a_listener_that_is_not_zeromq_does_not_answer() -> None:
    with socket.socket() as s:  # accepts (the kernel's backlog) but never greets
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        ann = Announcement(instance="x", role="router", name="a/b", server_key="0" * 40,
                           port=s.getsockname()[1], addresses=("127.0.0.1",))
        started = time.monotonic()
        assert first_answering(ann, budget=2 * CONNECT_TIMEOUT) is None
        assert time.monotonic() - started < 2 * CONNECT_TIMEOUT + 1.0


def test_mesh_connect_uses_the_address_that_answers(
        mdns_on: str, spawn: Callable[..., ManagedProcess], mesh_home: Home) -> None:
    lan = _lan_address()
    r = spawn(router_process(extra=["--auth-port", "0"], env={"AGP_MDNS": "0"}))
    port = int(r.ready_info["router"].rsplit(":", 1)[1])
    key = ensure_router(mesh_home).public.decode()
    # the router's record lists its LAN address first (it is bound to loopback only)
    with _announce(mdns_on, key, port, [lan, "127.0.0.1"], "router"), \
            Mesh.connect(timeout=15) as m:
        assert m.request("agp/router", "stats")["router_id"] == r.ready_info["router_id"]


def test_a_crowd_of_fetchers_is_served_in_turn_without_spoiling_each_other(
        make_reg: MakeReg) -> None:
    """More callers paging at once than there are slots: the late ones are refused
    OVERLOADED at their first page and served on their retry; no cursor of another caller
    is ever evicted, so every fetch that started finishes."""
    table = RegistryTable(ttl=60.0)
    for i in range(10):
        table.register(make_reg(instance=f"i{i}", labels=big_labels()), now=0.0)
    pages = SnapshotPages(max_open=4, ttl=5.0)
    callers = [b"caller%d" % i for i in range(12)]
    cursors: dict[bytes, str | None] = {c: None for c in callers}
    done: dict[bytes, int] = {}
    for _ in range(200):  # round robin, one page per caller per turn
        if len(done) == len(callers):
            break
        for c in callers:
            if c in done:
                continue
            req: dict[str, object] = {"page_bytes": 1}
            if cursors[c] is not None:
                req["cursor"] = cursors[c]
            try:
                page = pages.page(req, table.snapshot, 0.0, caller=c)
            except Overloaded:
                continue
            cursors[c] = page.get("next")
            if cursors[c] is None:
                done[c] = 1
    assert len(done) == len(callers)
    assert pages.evicted == 0
    assert pages.busy > 0


def test_a_caller_that_does_not_page_gets_the_whole_snapshot(make_reg: MakeReg) -> None:
    """``snapshot`` asked with nothing (what callers before pages send, and take as the
    whole table) answers the whole table, never its first page alone."""
    from discovery.service import Registry

    reg = Registry(endpoint="tcp://127.0.0.1:1")
    for i in range(20):  # ~180 KiB: several pages
        reg.table.register(make_reg(instance=f"i{i}", labels=big_labels()), now=0.0)
    body = wire(reg.snapshot(None, None))
    assert "next" not in body
    assert len(parse_snapshot(body).records) == 20
