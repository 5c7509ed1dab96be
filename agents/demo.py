"""`make demo`: every pattern, then the product's two scenarios, on local processes.

Part 1 (patterns): router, the registry and the topic key service, two processes serving one
service with weights 3 and 1, and this script as the client: request-response (and the
balancing it got), fire-and-forget, pub/sub, a credit-controlled stream, and the same
patterns sealed end to end (the router sees none of it).

Part 2 (scenarios): a router, the discovery registry and the four work agents (two
ml_trainer instances) as processes. Scenario 1 runs the ML workflow durably and serves
predictions from the deployed model; then one trainer is killed -9 mid-training (the retry
goes to the other) and a poison input fails its step while the agent keeps serving.
Scenario 2 streams ticks through analysis, prediction and alerts and measures tick-to-alert
latency. Everything runs on embedded defaults; logs go to ``run/demo/``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import time
from pathlib import Path

from agents.local_mesh import LocalMesh
from agents.procs import ManagedProcess, agent_process, router_process
from agents.scenarios import run_ml_scenario, run_streaming_scenario
from mesh import Mesh
from mesh.workflow import ProgressDisplay

SERVICE = "demo/patterns/echo"


def _line(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)))


def run_patterns(log_dir: Path) -> None:
    procs: list[ManagedProcess] = []
    try:
        from security.home import enroll_identity, ensure_router, open_home

        home = open_home(log_dir / "home")  # embedded defaults: a mesh of its own, secure
        ensure_router(home)
        enroll_identity(home, "demo-client", roles=("client",))
        enroll_identity(home, "echo", roles=("agent",), namespace="demo/patterns")
        for system in ("registry", "keys"):
            enroll_identity(home, system, roles=("agent",), namespace="agp/system")
        os.environ["AGP_HOME"] = str(home.root)
        os.environ["AGP_IDENTITY"] = "demo-client"
        router = router_process(log_dir=log_dir, extra=["--auth-port", "0"])
        info = router.start()
        procs.append(router)
        endpoint = info["router"]
        print(f"router   pid {router.pid} on {endpoint} (pub/sub on {info['pub']}); "
              f"CURVE + ZAP, tokens from {info['auth']}, RBAC from {home.policy}")
        for module, name in (("discovery.service", "registry"), ("security.key_service",
                                                                  "keys")):
            p = agent_process(module, endpoint, name=name, log_dir=log_dir,
                              extra=["--identity", name])
            p.start()
            procs.append(p)
            print(f"{name:<8} pid {p.pid} serves agp/system/{name}")
        for i, weight in enumerate((3, 1)):
            a = agent_process("agents.echo", endpoint, name=f"echo-{i}", log_dir=log_dir,
                              extra=["--namespace", "demo/patterns", "--instance", f"w{weight}-{i}",
                                     "--weight", str(weight), "--identity", "echo"])
            ready = a.start()
            procs.append(a)
            print(f"agent    pid {a.pid} serves {ready['instance']} with weight {weight}")

        with Mesh.connect(endpoint) as m:
            _line("request-response")
            t0 = time.perf_counter()
            reply = m.request(SERVICE, "echo", {"hello": "mesh", "n": 42})
            print(f"echo -> {reply}  ({(time.perf_counter() - t0) * 1000:.2f} ms)")
            shares: collections.Counter[str] = collections.Counter()
            for _ in range(400):
                shares[m.request(SERVICE, "whoami")["instance"]] += 1
            for inst, n in sorted(shares.items()):
                print(f"  {inst:<36} {n:4d} of 400 ({n / 4:.0f}%)")
            try:
                m.request(SERVICE, "fail", "poison")
            except Exception as exc:
                print(f"a failing handler answers: {type(exc).__name__}: {exc}")
            try:
                m.request("demo/patterns/nobody", "echo", 1, timeout=2)
            except Exception as exc:
                print(f"an unknown service answers at once: {type(exc).__name__}: {exc}")

            _line("pub/sub")
            sub = m.subscribe("ticks.")
            for i in range(1000):
                m.publish("ticks.DEMO", {"seq": i, "price": 100.0 + i / 100})
            got = [sub.get(timeout=10) for _ in range(1000)]
            print(f"published 1000, received {len(got)} in order: "
                  f"{[g.data['seq'] for g in got] == list(range(1000))}, gaps {sub.gaps}")
            sub.close()

            _line("fire-and-forget")
            for i in range(100):
                m.send(SERVICE, "echo", i)
            print("sent 100 messages with no reply expected")

            _line("streaming")
            chunk = bytes(1024 * 1024)
            t0 = time.perf_counter()
            with m.stream(SERVICE, "ingest") as s:
                for _ in range(64):
                    s.write(chunk, raw=True)
            dt = time.perf_counter() - t0
            print(f"streamed {s.result['chunks']} x 1 MiB to {s.result['instance']} "
                  f"in {dt * 1000:.0f} ms ({64 / 1024 / dt:.2f} GiB/s, credit-controlled, "
                  f"{'peer to peer over CURVE' if s.result.get('direct') else 'via the router'})")
        run_sealed(endpoint)
    finally:
        _line("shutdown")
        for p in reversed(procs):
            code = p.stop()
            print(f"{p.name:<8} pid {p.pid} exited with {code}")


def run_sealed(endpoint: str) -> None:
    """The same patterns with every payload sealed end to end (keys from the registry and
    the topic key service; the router and proxy hold none)."""
    _line("end to end: sealed payloads")
    with Mesh.connect(endpoint, e2e=True) as m:
        deadline = time.monotonic() + 15
        while not m.request("agp/system/registry", "lookup", {"name": SERVICE}):
            if time.monotonic() > deadline:
                raise RuntimeError("the echo agents did not register within 15 s")
            time.sleep(0.05)  # the agents' leases are their own: poll, bounded
        reply = m.request(SERVICE, "echo", {"secret": "sealed for the echo agents' keys"})
        print(f"request: {reply}  (sealed to the service's keys, opened by the instance)")
        with m.stream(SERVICE, "ingest") as s:
            for _ in range(16):
                s.write(bytes(1024 * 1024), raw=True)
        path = "peer to peer" if s.result["direct"] else "via the router"
        print(f"stream: {s.result['chunks']} x 1 MiB, each chunk sealed with AEGIS-256 under "
              f"a key from an ephemeral exchange, {path}")
        sub = m.subscribe("ticks.SEALED")
        for i in range(100):
            m.publish("ticks.SEALED", {"seq": i})
        got = [sub.get(timeout=10).data["seq"] for _ in range(100)]
        print(f"pub/sub: 100 published, {len(got)} opened in order {got == list(range(100))}; "
              f"batches sealed with the topic's key, refused {sub.refused or 0}")


def run_scenarios(log_dir: Path) -> None:
    from agents.scenario_report import format_ml, format_streaming
    from agents.scenarios import ml_workflow

    store = log_dir / "workflows.db"
    for leftover in log_dir.glob("workflows.db*"):
        leftover.unlink()  # a fresh store per demo: nothing to resume from an older one
    _line("scenario processes")
    mesh = LocalMesh(log_dir / "scenarios", namespace="demo/ml")
    try:
        mesh.start()
        print(f"router   pid {mesh.router.pid if mesh.router else '?'} on {mesh.endpoint}")
        for p in mesh.agents:
            print(f"{p.name:<20} pid {p.pid:<7} serves {p.ready_info.get('instance', '')}")
        endpoint, url = mesh.endpoint, f"sqlite:///{store}"

        _line("scenario 1: ML workflow")
        display = ProgressDisplay()
        result = asyncio.run(run_ml_scenario(endpoint, store_url=url, on_event=display))
        print(format_ml(result))

        _line("resilience: a trainer killed -9 mid-training")
        killed: list[str] = []

        def kill_first(run_id: str, step: str, instance: str, fraction: float, msg: str
                       ) -> None:
            if step == "training" and not killed and instance:
                killed.append(instance)
                mesh.find(instance.rsplit("/", 1)[-1]).kill()
                print(f"  killed {instance} (pid gone) at {fraction:.0%} of training")

        spec = ml_workflow(model="random_forest", hyperparams={"n_estimators": 600})
        result = asyncio.run(run_ml_scenario(endpoint, spec=spec, store_url=url,
                                             on_event=ProgressDisplay(), on_progress=kill_first,
                                             predictions=0))
        print(format_ml(result))

        _line("resilience: a poison input")
        poison = {"name": "poison", "steps": {"describe": {
            "agent": "data_analyst", "params": {"X": [[1.0, 2.0]], "feature_names": 5}}}}
        result = asyncio.run(run_ml_scenario(endpoint, spec=poison, store_url=url))
        print(format_ml(result))
        with Mesh.connect(endpoint) as m:
            stats = m.request("data_analyst", "stats")
            print(f"data_analyst still serves: calls {stats['calls']}, "
                  f"failures {stats['failures']}")

        _line("scenario 2: streaming ticks -> analysis -> prediction -> alerts")
        print(format_streaming(asyncio.run(run_streaming_scenario(endpoint, duration=4.0))))
    finally:
        _line("shutdown")
        for name, code in mesh.stop().items():
            print(f"{name:<20} exited with {code}")


def main() -> int:
    log_dir = Path("run/demo") if Path("Makefile").exists() else Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    run_patterns(log_dir)
    run_scenarios(log_dir)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
    print(f"\nlogs in {log_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
