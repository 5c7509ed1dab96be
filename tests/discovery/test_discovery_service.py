"""The registry served over the mesh, with real router, registry and agent processes."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from agents.procs import agent_process
from discovery.events import parse_event, parse_snapshot
from discovery.replica import Replica
from discovery.service import EVENTS_TOPIC, REGISTRY_SERVICE
from mesh import DeadlineExceeded, Forbidden, Malformed, Mesh, NoSuchService, Unavailable
from tests.helpers import wait_for


@pytest.fixture
def registry(spawn, router, enroll):
    enroll("registry", "agp/system")
    return spawn(agent_process("discovery.service", router.ready_info["router"],
                               name="registry", extra=["--identity", "registry"]))


@contextlib.contextmanager
def _watch(endpoint: str) -> Iterator[Callable[..., str]]:
    """``agp discover --watch --json`` as a process; yields ``next_line(match, what,
    timeout)``, the next line of its output that ``match`` accepts."""
    proc = subprocess.Popen([sys.executable, "-m", "mesh.cli", "discover", "--endpoint",
                             endpoint, "--watch", "--json", "--seconds", "60"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True)
    reader.start()

    def next_line(match: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        for _ in range(1000):  # bounded: the lines of one watch
            left = deadline - time.monotonic()
            assert left > 0, f"{what} not printed within {timeout}s"
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if match(line):
                return line
        raise AssertionError("too many lines")

    try:
        yield next_line
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
        out.close()


def _names(m: Mesh, name: str = "test/ns/echo") -> list[str] | None:
    try:
        return [r["instance"] for r in m.request(REGISTRY_SERVICE, "lookup", {"name": name},
                                                 timeout=2)]
    except (NoSuchService, Unavailable, DeadlineExceeded):
        return None  # the registry is restarting


def test_agents_register_and_are_found(router, registry, start_echo) -> None:
    start_echo(instance="a1")
    start_echo(instance="a2")
    with Mesh.connect(router.ready_info["router"]) as m:
        assert wait_for(lambda: sorted(_names(m)) == ["a1", "a2"], message="both registered")
        listed = m.request(REGISTRY_SERVICE, "list")
        assert {r["instance"] for r in listed} >= {"a1", "a2"}
        out = subprocess.run([sys.executable, "-m", "mesh.cli", "discover", "--endpoint",
                              router.ready_info["router"], "--json"], capture_output=True,
                             text=True, timeout=30, check=True)
        assert '"instance": "a1"' in out.stdout


def test_discover_shows_the_table_to_a_client_that_is_not_an_admin(router, registry, enroll,
                                                                   start_echo) -> None:
    import os

    start_echo(instance="a1")
    viewer = enroll("viewer", "viewer/ns", roles=("client",))
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: _names(m) == ["a1"], message="registered")
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "discover", "--endpoint",
                          router.ready_info["router"]], capture_output=True, text=True,
                         timeout=30, check=False, env={**os.environ, "AGP_IDENTITY": viewer})
    assert out.returncode == 0, out.stderr  # (the router's load is for admins: left out)
    assert "a1" in out.stdout
    assert "NAME" in out.stdout


def test_killed_agent_leaves_within_5s_and_returns_within_2s(router, registry, start_echo,
                                                              spawn) -> None:
    victim = start_echo(instance="victim")
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: _names(m) == ["victim"], message="registered")
        killed = time.monotonic()
        victim.kill()
        wait_for(lambda: _names(m) == [], timeout=5, interval=0.05, message="gone from registry")
        gone_after = time.monotonic() - killed
        wait_for(lambda: not any(s["service"] == "test/ns/echo"
                                 for s in m.request("agp/router", "services")),
                 timeout=5 - gone_after + 0.5, interval=0.05, message="gone from router")
        assert time.monotonic() - killed < 5.0
        started = time.monotonic()
        start_echo(instance="victim")
        # "back within 2 s" counts from the process being up, i.e. its ready line
        wait_for(lambda: _names(m) == ["victim"], timeout=2, interval=0.05,
                 message="back in the registry")
        assert time.monotonic() - started < 30


def test_agents_register_again_after_a_registry_restart(router, registry, start_echo, spawn
                                                        ) -> None:
    start_echo(instance="stay")
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: _names(m) == ["stay"], message="registered")
        registry.kill()
        spawn(agent_process("discovery.service", router.ready_info["router"],
                            name="registry2", extra=["--identity", "registry"]))
        wait_for(lambda: _names(m) == ["stay"], timeout=10, message="re-registered")


def test_bad_registrations_are_refused_and_change_nothing(router, registry, mesh_home
                                                          ) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        key = mesh_home.keypair("tester").public.decode()
        good = {"name": "test/ns/svc", "instance": "i1", "public_key": key}
        with pytest.raises(Malformed):
            m.request(REGISTRY_SERVICE, "register", {**good, "instance": "bad instance!"})
        with pytest.raises((Malformed, Forbidden)):
            m.request(REGISTRY_SERVICE, "register", {**good, "name": "Bad Name!"})
        with pytest.raises(Forbidden):
            m.request(REGISTRY_SERVICE, "register", "not a map")
        m.request(REGISTRY_SERVICE, "register", good)
        other = zmq.curve_keypair()[0].decode()
        with pytest.raises(Forbidden):  # a lease under someone else's key: refused
            m.request(REGISTRY_SERVICE, "register", {**good, "public_key": other})
        found = m.request(REGISTRY_SERVICE, "lookup", {"name": "test/ns/svc"})
        assert [r["public_key"] for r in found] == [key]


def test_the_registry_addressed_as_its_instance_keeps_the_same_door(router, registry,
                                                                     start_echo) -> None:
    start_echo(instance="victim")
    instance = registry.ready_info["instance"]  # agp/system/registry/<host>
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: _names(m) == ["victim"], message="registered")
        with pytest.raises(Forbidden):  # another's lease, with no key or with its key
            m.request(instance, "deregister", {"name": "test/ns/echo", "instance": "victim"})
        with pytest.raises(Forbidden):
            m.request(instance, "register", {"name": "test/ns/echo", "instance": "fake",
                                             "public_key": zmq.curve_keypair()[0].decode()})
        assert _names(m) == ["victim"]


def test_registration_outside_the_namespace_is_refused(router, registry, enroll, mesh_home
                                                       ) -> None:
    enroll("mallory", "tenant/evil")
    from security.home import client_security

    with Mesh.connect(router.ready_info["router"], security=client_security("mallory")) as m:
        key = mesh_home.keypair("mallory").public.decode()
        with pytest.raises(Forbidden):  # name hijack: acme's namespace is not mallory's
            m.request(REGISTRY_SERVICE, "register",
                      {"name": "acme/ml/ml_trainer", "instance": "fake", "public_key": key})
        m.request(REGISTRY_SERVICE, "register",
                  {"name": "tenant/evil/svc", "instance": "ok", "public_key": key})
        assert m.request(REGISTRY_SERVICE, "lookup", {"name": "acme/ml/ml_trainer"}) == []


def test_watch_snapshot_then_changes_without_gap(router, registry, start_echo) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        start_echo(instance="early")
        wait_for(lambda: _names(m) == ["early"], message="early registered")
        replica = Replica()
        sub = m.subscribe(EVENTS_TOPIC)
        replica.apply_snapshot(parse_snapshot(m.request(REGISTRY_SERVICE, "snapshot")))

        def apply_events_until(done, what: str, max_events: int = 100,
                               timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            for _ in range(max_events):
                if done():
                    return
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{what}: not seen within {timeout:g}s"
                replica.apply(parse_event(sub.get(timeout=remaining).data))
            assert done(), f"{what}: not seen within {max_events} events"

        late = start_echo(instance="late")
        apply_events_until(lambda: replica.get("test/ns/echo", "late"), "late registered")
        late.kill()
        apply_events_until(lambda: not replica.get("test/ns/echo", "late"), "late removed")
        assert replica.in_sync
        assert [r.instance for r in replica.records()] == ["early"]


def test_discover_watch_prints_joins_and_leaves_as_json(router, registry, start_echo) -> None:
    def next_event(kind: str, instance: str) -> dict:
        def match(line: str) -> bool:
            ev = json.loads(line) if line.startswith("{") else {}
            return ev.get("kind") == kind and ev.get("instance") == instance
        return json.loads(next_line(match, f"{kind} of {instance}"))

    with _watch(router.ready_info["router"]) as next_line:
        # subscribed and synced: the registry's table as of its snapshot comes first
        next_line(lambda line: line.startswith("NAME"), "the table")
        agent = start_echo(instance="w1")
        joined = next_event("join", "w1")
        agent.stop()
        left = next_event("leave", "w1")
        assert left["seq"] > joined["seq"]


def _epoch(m: Mesh) -> str | None:
    try:
        return m.request(REGISTRY_SERVICE, "snapshot", timeout=2)["epoch"]
    except (NoSuchService, Unavailable, DeadlineExceeded):
        return None  # the registry is restarting


def test_discover_watch_hears_a_registry_restart_no_agent_registers_after(
        router, registry, start_echo, spawn) -> None:
    """No event of the new registry ever comes (nobody registers with it): only its beat
    tells the watcher that the records it shows are gone."""
    echo = start_echo(instance="gone")
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: _names(m) == ["gone"], message="registered")
        old_epoch = _epoch(m)
        assert old_epoch
        with _watch(router.ready_info["router"]) as next_line:
            next_line(lambda line: " gone " in line, "the table with the agent")
            registry.kill()  # the registry and its only agent die together ...
            echo.kill()
            spawn(agent_process("discovery.service", router.ready_info["router"],
                                name="registry2", extra=["--identity", "registry"]))
            # ... and only the registry comes back
            line = next_line(lambda line: line.startswith('{"resync"'), "a resync", timeout=10)
        resync = json.loads(line)
        assert resync["epoch"] != old_epoch
        assert resync["resync"] == 0  # as of the new registry's seq: nobody registered
        assert resync["epoch"] == wait_for(lambda: _epoch(m), message="the new registry")
