"""`make demo`: a local mesh in separate processes, every pattern, then a clean shutdown.

Router, two processes serving one service with weights 3 and 1, and this script as the
client: request-response (and the balancing it got), fire-and-forget, pub/sub and a
credit-controlled stream. Everything runs on embedded defaults; logs go to ``run/demo/``.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

from agents.procs import ManagedProcess, agent_process, router_process
from mesh import Mesh

SERVICE = "demo/patterns/echo"


def _line(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)))


def run_patterns(log_dir: Path) -> None:
    procs: list[ManagedProcess] = []
    try:
        router = router_process(log_dir=log_dir, extra=["--insecure"])
        info = router.start()
        procs.append(router)
        endpoint = info["router"]
        print(f"router   pid {router.pid} on {endpoint} (pub/sub on {info['pub']})")
        for i, weight in enumerate((3, 1)):
            a = agent_process("agents.echo", endpoint, name=f"echo-{i}", log_dir=log_dir,
                              extra=["--namespace", "demo/patterns", "--instance", f"w{weight}-{i}",
                                     "--weight", str(weight), "--insecure"])
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
                  f"in {dt * 1000:.0f} ms ({64 / 1024 / dt:.2f} GiB/s, credit-controlled)")
    finally:
        _line("shutdown")
        for p in reversed(procs):
            code = p.stop()
            print(f"{p.name:<8} pid {p.pid} exited with {code}")


def main() -> int:
    log_dir = Path("run/demo") if Path("Makefile").exists() else Path(tempfile.mkdtemp())
    run_patterns(log_dir)
    print(f"\nlogs in {log_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
