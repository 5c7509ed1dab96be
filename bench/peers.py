"""``make bench-peers``: the same work over the systems agp-mesh is compared with.

- gRPC (grpcio, asyncio API): unary echo, sequential latency and throughput with 100 calls
  in flight; server streaming of 1 MiB chunks (GB/s = 1e9 B/s). Server and client run in
  separate processes, like the mesh's. Security "off" rows: gRPC without TLS beside
  agp-mesh with security off; "on" rows: gRPC over TLS (a self-signed certificate made with
  ``openssl`` for the run; skipped, and said so, without it) beside agp-mesh with CURVE,
  tokens and RBAC.
- Redis pub/sub (redis-py), when ``redis-server`` is on PATH and redis-py is installed: one
  publisher, one subscriber, delivered msg/s (``bench.peer_redis``); when absent the run says
  it was skipped and why.

The baseline column holds the peer's figure; :func:`run` takes a ``mesh`` hook that puts the
agp-mesh figure of the same rows (same pattern, scenario, unit, security) into the value
column, so one run prints both side by side. Rows (security "off" and "on"):
``request-response``: ``unary sequential p50..p99.9`` (ms), ``unary 100 in flight`` (req/s);
``streaming``: ``server stream 1 MiB`` (GB/s); ``pub/sub``: ``1 subscriber, delivered``
(msg/s), ``1 subscriber, dropped`` (%).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

from bench.latency import Recorder
from bench.peer_redis import redis_missing, redis_pubsub
from bench.procs import Control, Group
from bench.progress import Progress
from bench.report import RESULTS_DIR, Report

MiB: Final = 1 << 20
_START: Final = 30.0
_MARGIN: Final = 15.0
_GRPC_OPTIONS: Final = [
    ("grpc.max_send_message_length", 8 * MiB),
    ("grpc.max_receive_message_length", 8 * MiB),
]
RR, ST, PS = "request-response", "streaming", "pub/sub"


@dataclass(frozen=True)
class PeerProfile:
    """How long each peer scenario runs."""

    count: int  # sequential unary calls
    duration: float  # seconds of the timed scenarios
    inflight: int = 100


PROFILES: Final = {
    "full": PeerProfile(count=5000, duration=3.0),
    "quick": PeerProfile(count=1000, duration=1.0),
    "tiny": PeerProfile(count=50, duration=0.2, inflight=10),
}

MeshHook = Callable[[Report, PeerProfile], None]
#: "module:function" of the agp-mesh figures for ``make bench-peers`` (a :data:`MeshHook`);
#: None until the agp-mesh scenarios exist. ``main(mesh=...)`` overrides it.
MESH_HOOK: str | None = "bench.suite:peers_hook"


# --------------------------------------------------------------------------- gRPC sides
def tls_pair() -> tuple[bytes, bytes] | None:
    """(key, certificate) PEM for 127.0.0.1, self-signed with ``openssl``; None without it."""
    if not _TLS:
        exe = shutil.which("openssl")
        if exe is None:
            return None
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="agp-peers-tls-") as d:
            key, cert = Path(d) / "key.pem", Path(d) / "cert.pem"
            subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(cert)],
                           check=True, capture_output=True, timeout=30)
            _TLS.append((key.read_bytes(), cert.read_bytes()))
    return _TLS[0]


_TLS: list[tuple[bytes, bytes]] = []


def _grpc_server(ctl: Control, tls: tuple[bytes, bytes] | None = None) -> dict[str, int]:
    """An asyncio gRPC server on a free loopback port, until the parent says stop."""
    return asyncio.run(_serve(ctl, tls))


async def _serve(ctl: Control, tls: tuple[bytes, bytes] | None = None) -> dict[str, int]:
    import grpc

    from bench.grpc_peer import bench_peer_pb2 as pb
    from bench.grpc_peer import bench_peer_pb2_grpc as pbg

    calls = {"echo": 0, "chunks": 0}

    class Peer(pbg.PeerServicer):  # type: ignore[misc]
        async def Echo(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC name)
            calls["echo"] += 1
            return request

        async def Stream(self, request: Any, context: Any) -> Any:  # noqa: N802
            chunk = pb.Blob(data=bytes(request.chunk_size))  # one message, reused
            end = time.monotonic() + request.duration_ms / 1000
            for _ in range(request.max_chunks):
                if time.monotonic() >= end:
                    break
                yield chunk
                calls["chunks"] += 1

    server = grpc.aio.server(options=_GRPC_OPTIONS)
    pbg.add_PeerServicer_to_server(Peer(), server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    await server.start()
    ctl.ready(f"127.0.0.1:{port}")
    await asyncio.get_running_loop().run_in_executor(None, ctl.wait_stop, ctl.remaining())
    await server.stop(0.5)
    return calls


def _grpc_client(ctl: Control, target: str, mode: str, p: PeerProfile,
                 ca: bytes | None = None) -> dict[str, Any]:
    """Run one client scenario (``sequential``, ``inflight`` or ``stream``)."""
    return asyncio.run(_client(ctl, target, mode, p, ca))


async def _client(ctl: Control, target: str, mode: str, p: PeerProfile,
                  ca: bytes | None = None) -> dict[str, Any]:
    import grpc

    from bench.grpc_peer import bench_peer_pb2 as pb
    from bench.grpc_peer import bench_peer_pb2_grpc as pbg

    channel = grpc.aio.insecure_channel(target, options=_GRPC_OPTIONS) if ca is None else \
        grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca),
                                options=_GRPC_OPTIONS)
    async with channel:
        stub = pbg.PeerStub(channel)
        msg = pb.Blob(data=bytes(64))
        await asyncio.wait_for(channel.channel_ready(), _START)
        for _ in range(50):  # warm-up: connection, HTTP/2 settings, code paths
            await stub.Echo(msg)
        clock = time.perf_counter_ns
        if mode == "sequential":
            rec = Recorder(p.count)
            start = clock()
            for _ in range(p.count):
                t = clock()
                await stub.Echo(msg)
                rec.record(clock() - t)
            out: dict[str, Any] = rec.summary()
            out["req_per_s"] = rec.count / ((clock() - start) / 1e9)
            return out
        if mode == "inflight":
            rec = Recorder(min(10_000_000, int(p.duration * 200_000) + p.inflight))
            end = clock() + int(p.duration * 1e9)
            done = [0]

            async def caller() -> None:
                while clock() < end and not ctl.should_stop():
                    t = clock()
                    await stub.Echo(msg)
                    rec.record(clock() - t)
                    done[0] += 1

            start = clock()
            await asyncio.gather(*(caller() for _ in range(p.inflight)))
            out = rec.summary()
            out["req_per_s"] = done[0] / ((clock() - start) / 1e9)
            out["inflight"] = float(p.inflight)
            return out
        req = pb.StreamRequest(
            chunk_size=MiB, duration_ms=int(p.duration * 1000), max_chunks=10_000_000
        )
        n = nbytes = first = last = 0
        async for chunk in stub.Stream(req):
            last = clock()
            if first == 0:
                first = last  # the window opens at the first chunk
                continue
            n += 1
            nbytes += len(chunk.data)
        secs = (last - first) / 1e9
        return {
            "chunks": float(n),
            "bytes": float(nbytes),
            "gb_per_s": nbytes / secs / 1e9 if secs else 0.0,
        }


def grpc_scenario(mode: str, p: PeerProfile, tls: tuple[bytes, bytes] | None = None
                  ) -> dict[str, Any]:
    """One gRPC scenario with server and client in their own processes (over TLS when
    ``tls`` is a (key, certificate) pair)."""
    run = p.duration + p.count / 200 + _START + _MARGIN
    with Group() as g:
        server = g.spawn("grpc-server", _grpc_server, tls, max_run=run + _MARGIN)
        target = server.wait_ready()
        client = g.spawn("grpc-client", _grpc_client, target, mode, p,
                         tls[1] if tls else None, max_run=run)
        out: dict[str, Any] = client.result(run)
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def run(
    profile: str = "full",
    *,
    mesh: MeshHook | None = None,
    report: Report | None = None,
    progress: Progress | None = None,
) -> Report:
    """Measure gRPC (and Redis when present) into ``report``; then call ``mesh`` if given."""
    p = PROFILES[profile]
    rep = report or Report(
        title="agp-mesh vs gRPC / Redis", value_label="agp-mesh", baseline_label="peer"
    )
    prog = progress or Progress(total=7 + (mesh is not None))
    try:
        tls = tls_pair()
    except (OSError, subprocess.SubprocessError) as e:
        tls = None
        rep.message(f"gRPC over TLS skipped: no certificate ({type(e).__name__}: {e})")
    if tls is None:
        rep.message("gRPC over TLS skipped: openssl is not installed")
    for sec, pair in (("off", None), ("on", tls)):
        if sec == "on" and pair is None:
            continue
        g_note = f"grpcio {_version('grpcio')} asyncio, {'TLS' if pair else 'no TLS'}"
        for mode in ("sequential", "inflight", "stream"):
            prog.step(f"gRPC {mode} ({g_note})")
            try:
                r = grpc_scenario(mode, p, pair)
            except Exception as e:  # one broken peer must not hide the others
                rep.message(f"gRPC {mode} ({g_note}) failed: {type(e).__name__}: {e}")
                continue
            rep.add_raw(f"grpc/{mode}/{sec}", r)
            if mode == "sequential":
                rep.add_latency(RR, "unary sequential", baseline=r, note=g_note, security=sec)
            elif mode == "inflight":
                label = f"unary {p.inflight} in flight"
                rep.add_baseline(RR, label, r["req_per_s"], "req/s", note=g_note,
                                 security=sec)
                rep.add_latency(RR, label, baseline=r, note=g_note, security=sec)
            else:
                rep.add_baseline(ST, "server stream 1 MiB", r["gb_per_s"], "GB/s",
                                 note=g_note, security=sec)
    prog.step("Redis pub/sub")
    why = redis_missing()
    if why is not None:
        rep.message(f"Redis pub/sub skipped: {why}")
    else:
        r_note = f"redis-py {_version('redis')}, pipelined publish"
        try:
            r = redis_pubsub(p)
            rep.add_raw("redis/pubsub", r)
            rep.add_baseline(
                PS, "1 subscriber, delivered", r["delivered_per_s"], "msg/s", note=r_note
            )
            rep.add_baseline(PS, "1 subscriber, dropped", r["drop_pct"], "%", note=r_note)
        except Exception as e:
            rep.message(f"Redis pub/sub failed: {type(e).__name__}: {e}")
    if mesh is not None:
        prog.step("agp-mesh figures")
        mesh(rep, p)
    prog.done()
    return rep


def main(argv: list[str] | None = None, mesh: MeshHook | None = None) -> int:
    """``python -m bench.peers [--quick] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="bench.peers", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="where peers.json/.md/.png go")
    args = ap.parse_args(argv)
    if mesh is None and MESH_HOOK:
        module, _, func = MESH_HOOK.partition(":")
        mesh = getattr(importlib.import_module(module), func)
    rep = run("quick" if args.quick else "full", mesh=mesh)
    paths = rep.write(args.out, stem="peers", plot="peers-latency.png")
    rep.print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
