"""End-to-end sealing across a real mesh: a tap on the router finds no plaintext, and a
tampered ciphertext is refused by the agent (fixture ``sealed_mesh``:
tests/security/sealed_mesh.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mesh import Unauthenticated
from tests.helpers import wait_for

SECRET = "TOP-SECRET-7f3a"
RAW_SECRET = b"RAW-SECRET-91c2"


@contextmanager
def _registry_calls(am: Any) -> Iterator[list[str]]:
    """A spy on the client's own calls to the registry (the network stays real): the
    destination of each, in order."""
    calls: list[str] = []
    real = am.request

    def counting(dest: str, *args: Any, **kwargs: Any) -> Any:
        if dest == "agp/system/registry":
            calls.append(dest)
        return real(dest, *args, **kwargs)

    am.request = counting
    try:
        yield calls
    finally:
        del am.request


def _second_instance_joins(m: Any, spawn: Any, enroll: Any, dest: str) -> Callable[[], None]:
    """Start instance "two" of ``dest`` once the client holds the keys of "one" alone; wait
    until the registry lists both. Returns what puts the old keys back in the client's
    cache, fresh a minute more: as if looked up just before "two" joined."""
    from agents.procs import agent_process

    am = m._amesh
    old_keys = am.service_keys.entries[dest][1]
    enroll("echo-e2e-two", "test/e2e")
    spawn(agent_process("agents.echo", am.core.endpoint, name="echo-e2e-two",
                        extra=["--namespace", "test/e2e", "--identity", "echo-e2e-two",
                               "--instance", "two"]))
    wait_for(lambda: len(m.request("agp/system/registry", "lookup", {"name": dest})) == 2,
             message="the second instance registered")

    def with_old_keys() -> None:
        am.service_keys.entries[dest] = (am._loop().time() + 60.0, old_keys)

    return with_old_keys


def test_the_router_forwards_no_plaintext_payload(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    assert m.request("test/e2e/echo", "echo", {"secret": SECRET}) == {"secret": SECRET}
    assert m.request("test/e2e/echo", "echo", RAW_SECRET, raw=True) == RAW_SECRET
    forwarded = b"".join(b"".join(frames) for frames in captured)
    assert len(captured) >= 4  # both requests and both replies went through the tap
    assert SECRET.encode() not in forwarded
    assert RAW_SECRET not in forwarded


def test_a_tampered_ciphertext_is_refused(sealed_mesh) -> None:
    m, _, tamper = sealed_mesh
    tamper["on"] = True
    try:
        with pytest.raises(Unauthenticated):
            m.request("test/e2e/echo", "echo", {"secret": SECRET}, timeout=10)
    finally:
        tamper["on"] = False
    assert m.request("test/e2e/echo", "echo", "after") == "after"


def test_a_sealed_send_crosses_the_router_as_ciphertext(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    m.send("test/e2e/echo/one", "record", {"secret": SECRET})
    wait_for(lambda: {"secret": SECRET} in m.request("test/e2e/echo/one", "recorded_items"),
             message="the sealed send was opened and recorded by the agent")
    forwarded = b"".join(b"".join(frames) for frames in captured)
    assert SECRET.encode() not in forwarded


def test_send_nowait_on_a_sealing_client_is_refused_clearly(sealed_mesh) -> None:
    from mesh import ConfigError

    m, _, _ = sealed_mesh
    with pytest.raises(ConfigError, match="use `await send"):
        m._amesh.send_nowait("test/e2e/echo", "record", {"secret": SECRET})


def test_request_nowait_seals_too_and_fetches_keys_once(sealed_mesh) -> None:
    """The first call to a destination whose keys are unknown runs as a Task (it looks them
    up); the ones after are sealed at once into a plain ReplyFuture. No plaintext either way."""
    import asyncio

    from mesh.nowait import ReplyFuture

    m, captured, _ = sealed_mesh
    am = m._amesh
    am.service_keys.clear()
    captured.clear()

    async def main() -> tuple[bool, list[object]]:
        first = am.request_nowait("test/e2e/echo", "echo", {"secret": SECRET, "i": -1})
        looked_up = isinstance(first, asyncio.Task)
        await first
        rest = [am.request_nowait("test/e2e/echo", "echo", {"secret": SECRET, "i": i})
                for i in range(50)]
        assert all(type(f) is ReplyFuture for f in rest)
        rest.append(am.request_nowait("test/e2e/echo", "echo", RAW_SECRET, raw=True))
        return looked_up, await asyncio.gather(*rest)

    looked_up, out = m._io.call(main(), timeout=30)
    assert looked_up
    assert out[:50] == [{"secret": SECRET, "i": i} for i in range(50)]
    assert out[50] == RAW_SECRET
    forwarded = b"".join(b"".join(frames) for frames in captured)
    assert SECRET.encode() not in forwarded
    assert RAW_SECRET not in forwarded


def test_requests_finding_the_key_cache_empty_share_one_registry_lookup(sealed_mesh) -> None:
    import asyncio

    m, _, _ = sealed_mesh
    am = m._amesh
    async def main() -> list[object]:
        return await asyncio.gather(*(am.request("test/e2e/echo", "echo", i)
                                      for i in range(50)))

    am.service_keys.clear()
    with _registry_calls(am) as lookups:
        out = m._io.call(main(), timeout=30)
    assert out == list(range(50))
    assert lookups == ["agp/system/registry"]


def test_stale_keys_serve_while_one_lookup_in_the_background_refreshes_them(sealed_mesh
                                                                             ) -> None:
    """Past KEYS_FRESH_S no request waits for the registry: the old keys seal it at once and
    one lookup replaces them; past KEYS_STALE_S too, a request waits for a lookup."""
    import asyncio

    from mesh.nowait import ReplyFuture
    from mesh.service_keys import KEYS_STALE_S

    m, _, _ = sealed_mesh
    am = m._amesh
    dest = "test/e2e/echo"
    assert m.request(dest, "echo", 0) == 0  # the keys are cached
    async def main() -> tuple[list[type], list[object], float, bool]:
        loop = am._loop()
        expiry, keys = am.service_keys.entries[dest]
        am.service_keys.entries[dest] = (loop.time() - 0.001, keys)  # stale, in the grace
        futures = [am.request_nowait(dest, "echo", i) for i in range(20)]
        kinds = [type(f) for f in futures]
        refresh = am.service_keys.lookups[dest]  # started by the first of them, shared by the rest
        out = await asyncio.gather(*futures)
        await refresh  # bounded by its own 5 s timeout
        refreshed = am.service_keys.entries[dest][0] > loop.time()
        # past the grace too
        am.service_keys.entries[dest] = (loop.time() - KEYS_STALE_S - 0.001, keys)
        late = am.request_nowait(dest, "echo", "late")
        waited = isinstance(late, asyncio.Task)
        assert await late == "late"
        return kinds, out, refreshed, waited

    with _registry_calls(am) as lookups:
        kinds, out, refreshed, waited = m._io.call(main(), timeout=30)
    assert kinds == [ReplyFuture] * 20  # sealed at once with the stale keys
    assert out == list(range(20))
    assert refreshed
    assert waited
    assert lookups == ["agp/system/registry"] * 2  # one refresh, then one waited-for lookup


def test_an_instance_that_joins_after_the_keys_were_fetched_gets_answered_requests(
        sealed_mesh, spawn, enroll) -> None:
    """The router balances onto a new instance at once; a client whose cached keys predate
    it seals without its key. That instance refuses before running the handler
    (NotARecipient); ``request`` fetches the keys again and sends once more, so every call
    is answered, by both instances (a stream's open likewise); ``request_nowait`` fails that
    one call and drops the stale keys, so the next one is sealed for both."""
    import asyncio

    from mesh import NotARecipient
    from mesh.nowait import ReplyFuture

    m, _, _ = sealed_mesh
    am = m._amesh
    dest = "test/e2e/echo"
    assert m.request(dest, "whoami")["instance"] == f"{dest}/one"
    with_old_keys = _second_instance_joins(m, spawn, enroll, dest)
    with_old_keys()
    served = {m.request(dest, "whoami")["instance"] for _ in range(8)}
    assert served == {f"{dest}/one", f"{dest}/two"}  # "two" answered too, after a re-key
    assert len(am.service_keys.entries[dest][1]) == 2

    async def nowait_round() -> list[object]:
        futures = [am.request_nowait(dest, "whoami") for _ in range(4)]
        assert all(type(f) is ReplyFuture for f in futures)
        return await asyncio.gather(*futures, return_exceptions=True)

    with_old_keys()
    out = m._io.call(nowait_round(), timeout=30)
    refused = [r for r in out if isinstance(r, Exception)]
    assert refused
    assert all(isinstance(r, NotARecipient) for r in refused)  # typed: it never ran
    assert dest not in am.service_keys.entries  # dropped: the next call looks the keys up
    assert {m.request(dest, "whoami")["instance"] for _ in range(4)} == {f"{dest}/one",
                                                                         f"{dest}/two"}
    streamed = set()
    with_old_keys()
    for _ in range(4):  # a sealed stream open is re-keyed the same way
        with m.stream(dest, "ingest") as s:
            s.write(b"chunk", raw=True)
        streamed.add(s.result["instance"])
    assert streamed == {f"{dest}/one", f"{dest}/two"}


def test_an_instance_refusing_a_sealed_send_tells_its_sender_who_looks_the_keys_up_again(
        sealed_mesh, spawn, enroll) -> None:
    """A fire-and-forget has no reply to carry NotARecipient. The instance that refused it
    (sealed for keys older than it) tells the sender anyway, through the router: the sender
    drops those keys, and the sends after it reach the new instance too, though the old
    keys would have served another minute."""
    from prometheus_client import CollectorRegistry

    from mesh import metrics

    m, _, _ = sealed_mesh
    am = m._amesh
    dest = "test/e2e/echo"
    m.request(dest, "whoami")
    assert len(am.service_keys.entries[dest][1]) == 1
    _second_instance_joins(m, spawn, enroll, dest)()

    def reached_two() -> bool:
        m.send(dest, "record", {"n": 1})  # balanced over both instances
        return bool(m.request(f"{dest}/two", "recorded_items"))

    wait_for(reached_two, timeout=20, message="a send reached the instance that joined")
    assert len(am.service_keys.entries[dest][1]) == 2  # looked up again: both keys
    stats = metrics.ClientStats()  # told, not timed out: the client counts it
    stats.track(am)
    registry = CollectorRegistry()
    registry.register(metrics.StatsCollector([stats]))
    assert (registry.get_sample_value("agp_client_sends_refused_total") or 0) >= 1

