"""``ServiceKeys`` fed a registry lookup function (no sockets): one lookup per service at a
time, stale keys served while one background lookup refreshes them, a service with no keys
left forgotten at once, a bad name refused before anything is asked."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mesh.errors import ConfigError, NoSuchService, Unavailable
from mesh.service_keys import KEYS_STALE_S, ServiceKeys

SVC = "org/ns/svc"


def _run(records: list[Any], body: Any) -> list[str]:
    """Run ``body(keys, loop)`` with a lookup answering ``records`` (or raising it)."""
    asked: list[str] = []

    async def lookup(name: str) -> list[dict[str, Any]]:
        asked.append(name)
        await asyncio.sleep(0)  # answered on a later turn, as over the network
        if isinstance(records, Exception):
            raise records
        return records

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await body(ServiceKeys(lambda: loop, lookup), loop)

    asyncio.run(main())
    return asked


RECORDS = [{"public_key": "K2", "instance": "two"}, {"public_key": "K1", "instance": "one"}]


def test_concurrent_callers_share_one_lookup_and_an_instance_name_picks_its_key() -> None:
    async def body(sk: ServiceKeys, loop: Any) -> None:
        got = await asyncio.gather(*(sk.get(SVC) for _ in range(20)))
        assert got == [[b"K1", b"K2"]] * 20
        assert await sk.get(f"{SVC}/two") == [b"K2"]
        assert sk.fresh(SVC) == [b"K1", b"K2"]  # cached: no lookup

    assert _run(RECORDS, body) == [SVC, SVC]  # one for the service, one for the instance


def test_stale_keys_serve_while_one_lookup_refreshes_them_then_a_caller_waits() -> None:
    async def body(sk: ServiceKeys, loop: Any) -> None:
        keys = await sk.get(SVC)
        sk.entries[SVC] = (loop.time() - 0.001, keys)  # past fresh, within the grace
        assert sk.fresh(SVC) == keys
        assert sk.fresh(SVC) == keys
        await sk.lookups[SVC]  # one refresh for both
        assert sk.entries[SVC][0] > loop.time()
        sk.entries[SVC] = (loop.time() - KEYS_STALE_S - 0.001, keys)  # past the grace too
        assert sk.fresh(SVC) is None
        assert await sk.get(SVC) == keys
        sk.forget(SVC)
        assert sk.fresh(SVC) is None

    assert _run(RECORDS, body) == [SVC] * 3


def test_no_keys_left_is_an_error_and_forgets_the_old_ones() -> None:
    async def body(sk: ServiceKeys, loop: Any) -> None:
        sk.entries[SVC] = (loop.time() + 60, [b"K1"])
        sk.entries[f"{SVC}/one"] = (loop.time() - 0.001, [b"K1"])
        with pytest.raises(NoSuchService):
            await sk.get(f"{SVC}/gone")
        assert sk.fresh(f"{SVC}/one") == [b"K1"]  # stale: served, refresh started
        with pytest.raises(NoSuchService):
            await sk.lookups[f"{SVC}/one"]
        assert f"{SVC}/one" not in sk.entries  # the service is gone: so are its keys
        assert sk.fresh(SVC) == [b"K1"]  # others untouched
        with pytest.raises(ConfigError):
            await sk.get("just-a-name")

    assert _run([], body) == [SVC, SVC]


def test_a_failed_refresh_keeps_the_stale_keys_and_says_so(caplog) -> None:
    async def body(sk: ServiceKeys, loop: Any) -> None:
        sk.entries[SVC] = (loop.time() - 0.001, [b"K1"])
        assert sk.fresh(SVC) == [b"K1"]
        with pytest.raises(Unavailable):
            await sk.lookups[SVC]
        assert sk.fresh(SVC) == [b"K1"]  # still within the grace: served, asked again

    with caplog.at_level(logging.WARNING, logger="mesh.service_keys"):
        assert _run(Unavailable("registry down"), body) == [SVC, SVC]
    assert "refreshing the keys of org/ns/svc failed" in caplog.text


def test_only_a_refusal_for_stale_keys_forgets_them() -> None:
    from mesh.errors import NotARecipient, Unauthenticated

    async def body(sk: ServiceKeys, loop: Any) -> None:
        sk.entries[SVC] = (loop.time() + 60, [b"K1"])
        assert not sk.refused(SVC, Unauthenticated("tampered"))  # not about the keys
        assert sk.fresh(SVC) == [b"K1"]
        assert sk.refused(SVC, NotARecipient("not sealed for this key"))
        assert sk.fresh(SVC) is None  # the next call looks them up

    assert _run(RECORDS, body) == []
