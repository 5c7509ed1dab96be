"""The four patterns between real processes: router, echo agents, this test as the client."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from mesh import AsyncMesh, HandlerError, Mesh, NoSuchAction, NoSuchService
from tests.helpers import rss_bytes, wait_for

SVC = "test/ns/echo"


def test_request_response_with_arrays(router, start_echo) -> None:
    start_echo()
    with Mesh.connect(router.ready_info["router"]) as m:
        arr = np.random.default_rng(1).normal(size=(256, 64))
        out = m.request(SVC, "echo", {"a": arr, "s": "text"})
        np.testing.assert_array_equal(out["a"], arr)
        assert out["s"] == "text"
        assert m.request(SVC, "echo", b"\x00raw", raw=True) == b"\x00raw"
        assert m.request("echo", "echo", 5) == 5  # the short name resolves when unique


def test_handler_errors_are_typed_and_the_agent_survives(router, start_echo) -> None:
    start_echo()
    with Mesh.connect(router.ready_info["router"]) as m:
        with pytest.raises(HandlerError, match="asked to fail"):
            m.request(SVC, "fail", "poison")
        with pytest.raises(NoSuchAction):
            m.request(SVC, "no_such_action")
        with pytest.raises(NoSuchService):
            m.request("test/ns/nobody", "echo", timeout=5)
        assert m.request(SVC, "echo", 1) == 1


def test_weights_3_to_1_give_75_percent(router, start_echo) -> None:
    heavy = start_echo(weight=3, instance="heavy")
    start_echo(weight=1, instance="light")
    with Mesh.connect(router.ready_info["router"]) as m:
        shares = Counter(m.request(SVC, "whoami")["instance"] for _ in range(2000))
    share = shares[heavy.ready_info["instance"]] / 2000
    assert 0.70 <= share <= 0.80, shares


def test_request_to_an_instance_name_reaches_that_instance(router, start_echo) -> None:
    start_echo(instance="one")
    two = start_echo(instance="two")
    with Mesh.connect(router.ready_info["router"]) as m:
        name = two.ready_info["instance"]
        assert {m.request(name, "whoami")["instance"] for _ in range(20)} == {name}


def test_fire_and_forget_is_delivered_in_order(router, start_echo) -> None:
    agent = start_echo()
    with Mesh.connect(router.ready_info["router"]) as m:
        for i in range(500):
            m.send(agent.ready_info["instance"], "record", i)
        items = wait_for(lambda: len(got := m.request(agent.ready_info["instance"],
                                                        "recorded_items")) == 500 and got,
                         message="500 sends recorded")
        assert items == list(range(500))


def test_subscribe_then_publish_delivers_the_first_message(router) -> None:
    endpoint = router.ready_info["router"]
    with Mesh.connect(endpoint) as pub, Mesh.connect(endpoint) as sub_client:
        for round_ in range(5):  # a fresh topic each time: no slow-joiner loss once confirmed
            sub = sub_client.subscribe(f"first.{round_}")
            pub.publish(f"first.{round_}.x", {"round": round_})
            msg = sub.get(timeout=10)
            assert msg.topic == f"first.{round_}.x"
            assert msg.data == {"round": round_}
            sub.close()


def test_pubsub_prefix_order_and_batching_invisible(router) -> None:
    endpoint = router.ready_info["router"]
    with Mesh.connect(endpoint) as pub, Mesh.connect(endpoint) as sub_client:
        stocks = sub_client.subscribe("stocks.")
        alerts = sub_client.subscribe("alerts.")
        for i in range(3000):
            pub.publish("stocks.AAPL" if i % 2 else "stocks.MSFT", {"i": i})
        pub.publish("alerts.high", "boom")
        got = [stocks.get(timeout=10) for _ in range(3000)]
        assert [g.data["i"] for g in got] == list(range(3000))
        assert alerts.get(timeout=10).data == "boom"
        assert stocks.gaps == 0
        assert stocks.dropped == 0


def test_callback_subscription_and_async_face(router) -> None:
    async def main() -> list:
        endpoint = router.ready_info["router"]
        async with await AsyncMesh.connect(endpoint) as a, await AsyncMesh.connect(endpoint) as b:
            got: list = []
            done = asyncio.Event()

            def on_msg(msg) -> None:
                got.append(msg.data)
                if len(got) == 100:
                    done.set()

            await b.subscribe("cb.", on_msg)
            for i in range(100):
                a.publish("cb.t", i)
            await asyncio.wait_for(done.wait(), 10)
            return got

    assert asyncio.run(main()) == list(range(100))


def test_stream_1_gib_with_bounded_memory(router, start_echo) -> None:
    agent = start_echo()
    chunk = bytes(1024 * 1024)
    with Mesh.connect(router.ready_info["router"]) as m:
        with m.stream(SVC, "ingest") as s:  # warm up both sides
            for _ in range(16):
                s.write(chunk, raw=True)
        rss_router, rss_agent = rss_bytes(router.pid), rss_bytes(agent.pid)
        with m.stream(SVC, "ingest", timeout=300) as s:
            for _ in range(1024):
                s.write(chunk, raw=True)
        assert s.result["chunks"] == 1024
        assert s.result["bytes"] == 1024 * 1024 * 1024
        # credit keeps at most a window of chunks in flight: memory grows by far less than 1 GiB
        assert rss_bytes(router.pid) - rss_router < 96 * 1024 * 1024
        assert rss_bytes(agent.pid) - rss_agent < 96 * 1024 * 1024


def test_progress_reports_and_cancellation(router, start_echo) -> None:
    start_echo()

    async def main() -> tuple[list, object]:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            seen: list = []
            result = await m.request(SVC, "work", {"steps": 5}, on_progress=lambda f, s:
                                     seen.append((f, s)))
            started = asyncio.Event()
            task = asyncio.ensure_future(m.request(SVC, "work", {"steps": 1000,
                                                                 "step_seconds": 0.05},
                                                   on_progress=lambda f, s: started.set()))
            await asyncio.wait_for(started.wait(), 10)  # the first report names the instance
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return seen, result

    seen, result = asyncio.run(main())
    assert result["steps"] == 5
    assert [f for f, _ in seen] == [0.0, 0.2, 0.4, 0.6, 0.8]


def test_a_slow_subscriber_loses_only_its_own_messages_and_knows_how_many(spawn) -> None:
    from agents.procs import router_process

    r = spawn(router_process(name="hwm", extra=["--insecure", "--pub-hwm", "2000"]))
    endpoint = r.ready_info["router"]
    with Mesh.connect(endpoint) as pub, Mesh.connect(endpoint) as fast_client, \
            Mesh.connect(endpoint, hwm=2000, sub_queue=1000) as slow_client:
        fast = fast_client.subscribe("load.")
        slow = slow_client.subscribe("load.")  # never read until the end
        total = 60_000
        for i in range(total):
            pub.publish("load.t", i)
        pub.flush()
        got = [fast.get(timeout=20).data for _ in range(total)]
        assert got == list(range(total))  # the fast one is not stalled and loses nothing
        assert fast.gaps == 0
        assert fast.dropped == 0
        # the slow one: what it kept + what its own queue dropped + router gaps == total
        def accounted() -> bool:
            return len(slow.queue) + slow.dropped + slow.gaps == total
        wait_for(accounted, timeout=20, message="every message of the slow subscriber accounted")
        assert slow.dropped + slow.gaps > 0
        kept = [slow.get(timeout=1).data for _ in range(len(slow.queue))]
        assert kept == sorted(kept)
        assert kept[-1] == total - 1  # it keeps the newest, as a live feed should


def test_an_action_may_not_shadow_an_agent_method() -> None:
    from agents.base import Agent, action

    with pytest.raises(TypeError, match="would replace Agent.run"):
        class Bad(Agent):  # noqa: F841
            @action()
            def run(self, data, ctx):
                return data

    # nor one of what its mixins define (the registry record, a reply's sealing)
    for taken in ("registration", "_reply"):
        with pytest.raises(TypeError, match=f"would replace Agent.{taken}"):
            type("Bad", (Agent,), {taken: action()(lambda self, data, ctx: data)})


def test_an_agent_takes_its_settings_from_a_file_the_environment_and_flags(
        router, enroll, spawn, tmp_path, monkeypatch) -> None:
    from agents.procs import agent_process

    identity = enroll("filed", "test/cfg")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'namespace = "test/cfg"\nidentity = "{identity}"\ninstance = "from-file"\n'
                   'weight = 2\ncapacity = 3\n')
    monkeypatch.setenv("AGP_INSTANCE", "from-env")  # the environment beats the file
    proc = spawn(agent_process("agents.echo", router.ready_info["router"], name="filed",
                               extra=["--config", str(cfg), "--weight", "5"]))  # flags beat both
    assert proc.ready_info["instance"] == "test/cfg/echo/from-env"
    with Mesh.connect(router.ready_info["router"]) as m:
        (svc,) = [s for s in m.request("agp/router", "services") if s["service"] == "test/cfg/echo"]
        assert svc["instances"][0]["weight"] == 5
        assert svc["instances"][0]["capacity"] == 3


def test_a_bad_agent_config_file_is_refused_clearly(tmp_path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "bad.toml"
    cfg.write_text('colour = "blue"\n')
    out = subprocess.run([sys.executable, "-m", "agents.echo", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "unknown settings ['colour']" in out.stderr


def test_flush_wait_returns_once_the_router_has_every_publish(router) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        before = m.request("agp/router", "stats")["published_messages"]
        for i in range(20_000):
            m.publish("flushed.t", i)
        m.flush(wait=True)
        # no subscriber needed: the router counted all of them before the barrier's reply
        assert m.request("agp/router", "stats")["published_messages"] - before == 20_000


def test_any_client_may_ping_the_router_but_only_admins_read_its_stats(router, mesh_home
                                                                       ) -> None:
    from mesh import Forbidden
    from security.home import enroll_identity

    enroll_identity(mesh_home, "plain", roles=("client",))
    with Mesh.connect(router.ready_info["router"], identity="plain") as m:
        assert m.request("agp/router", "ping") == "pong"
        with pytest.raises(Forbidden):
            m.request("agp/router", "stats")
