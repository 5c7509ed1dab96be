"""The agp-mesh under test in `make bench`: the router, an echo agent, the system agents an
end-to-end run needs, and the secure environment they share, each side in its own process.

``bench.mesh_scenarios`` drives clients against what ``start_mesh`` starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal, Union

from bench.procs import Control, Group

START_S = 30.0  # a side's budget to start, beyond its run
MARGIN_S = 10.0  # a side outlives the client by this much
# security of a run: False (off), True (CURVE + ZAP + token + RBAC), or "e2e" (all that, and
# clients seal payloads end to end)
Mode = Union[bool, Literal["e2e"]]
SERVICE = "bench/mesh/echo"


def uv_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# --------------------------------------------------------------------------- sides
def router_side(ctl: Control, secure: Mode) -> dict[str, Any]:
    import logging

    from router.config import RouterConfig
    from router.server import Router

    # agents leaving at the end of each run are news to an operator, not to a bench's reader
    logging.getLogger("agp.router").setLevel(logging.ERROR)

    parts = None
    if secure:
        from security.server import secure_router

        parts = secure_router(auth_port=0)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0"),
               access=parts.access if parts else None,
               server_keypair=parts.server_keypair if parts else None)
    r.start()
    threading.Thread(target=lambda: (ctl.wait_stop(ctl.remaining()), r.stop()),
                     daemon=True).start()
    ctl.ready((r.endpoint, r.pub_endpoint))
    r.run()
    if parts is not None:
        parts.stop()
    return r.stats.as_dict()


def agent_side(ctl: Control, endpoint: str, secure: Mode) -> dict[str, Any]:
    import os

    from agents.echo import Echo

    async def main() -> dict[str, Any]:
        security = None
        if secure:
            from security.home import client_security

            security = client_security(AGENT_ID)
        agent = BenchEcho(endpoint=endpoint, namespace="bench/mesh", capacity=1024,
                          security=security)
        await agent.start()
        if os.environ.get("AGP_E2E"):  # clients seal for the key the registry knows
            await registered(agent)
        ctl.ready(agent.instance_name)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ctl.wait_stop, ctl.remaining())
        await agent._shutdown(drain_timeout=1.0)
        return {"received": agent.received, "first_ns": agent.first_ns,
                "last_ns": agent.last_ns}

    class BenchEcho(Echo):
        received = 0
        first_ns = 0
        last_ns = 0

        from agents.base import action

        @action(inline=True)
        def count(self, data: Any, ctx: Any) -> None:
            now = time.perf_counter_ns()
            if not self.received:
                self.first_ns = now
            self.last_ns = now
            self.received += 1

    return uv_run(main())


async def registered(agent: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not agent.registered and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the lease is the agent's own task: poll it, bounded
    if not agent.registered:
        raise RuntimeError(f"{agent.service} not registered within {timeout:g}s")


def system_side(ctl: Control, endpoint: str) -> dict[str, Any]:
    """The registry (whose keys e2e clients seal for) and the topic key service."""
    async def main() -> dict[str, Any]:
        from discovery.service import Registry
        from security.home import client_security
        from security.key_service import TopicKeyService

        registry = Registry(endpoint=endpoint, security=client_security(REGISTRY_ID))
        await registry.start()
        keys = TopicKeyService(endpoint=endpoint, security=client_security(KEYS_ID))
        await keys.start()
        await registered(keys)
        ctl.ready()
        await asyncio.get_running_loop().run_in_executor(None, ctl.wait_stop, ctl.remaining())
        await keys._shutdown(drain_timeout=1.0)
        await registry._shutdown(drain_timeout=1.0)
        return {}

    return uv_run(main())


def start_system(g: Group, run: float, secure: Mode, endpoint: str) -> None:
    """Start the system agents end-to-end clients need (only in "e2e" runs)."""
    if secure == "e2e":
        g.spawn("system", system_side, endpoint, max_run=run + MARGIN_S,
                env=secure_env(secure)).wait_ready()


async def connect(endpoint: str) -> Any:
    """A client of the mesh under test, with this side's identity in secure runs."""
    import os

    from mesh.aio import AsyncMesh

    # secure runs set AGP_IDENTITY (and AGP_HOME) in this side's environment
    return await AsyncMesh.connect(endpoint, breakers=False,
                                   identity=os.environ.get("AGP_IDENTITY") or None)


AGENT_ID = "bench-agent"
CLIENT_ID = "bench-client"
REGISTRY_ID = "bench-registry"
KEYS_ID = "bench-keys"
_HOME: dict[str, str] = {}


def secure_env(secure: Mode) -> dict[str, str | None]:
    """The environment of every side: a temporary AGP_HOME with the bench identities, and
    AGP_E2E when clients seal payloads end to end."""
    if not secure:
        return {"AGP_IDENTITY": None, "AGP_E2E": None}
    if not _HOME:
        import atexit
        import shutil
        import tempfile

        from security.home import enroll_identity, ensure_router, open_home

        root = tempfile.mkdtemp(prefix="agp-bench-home-")
        # this process made it, this process removes it (the sides it spawns end first)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        home = open_home(root)
        ensure_router(home)
        enroll_identity(home, AGENT_ID, roles=("agent",), namespace="bench/mesh")
        enroll_identity(home, CLIENT_ID, roles=("client",))
        enroll_identity(home, REGISTRY_ID, roles=("agent",), namespace="agp/system")
        enroll_identity(home, KEYS_ID, roles=("agent",), namespace="agp/system")
        _HOME["root"] = root
    return {"AGP_HOME": _HOME["root"], "AGP_IDENTITY": CLIENT_ID,
            "AGP_E2E": "1" if secure == "e2e" else None}


def start_mesh(g: Group, run: float, secure: Mode, env: dict[str, Any] | None = None, *,
               agent: bool = True) -> tuple[str, Any]:
    """Start the router, the system agents (e2e runs) and (``agent``) the echo agent for a
    run of ``run`` seconds; the router's endpoint and the agent's handle (or None)."""
    env = {**secure_env(secure), **(env or {})}
    router = g.spawn("router", router_side, secure, max_run=run + MARGIN_S, env=env)
    endpoint, _ = router.wait_ready()
    start_system(g, run, secure, endpoint)
    if not agent:
        return str(endpoint), None
    echo = g.spawn("agent", agent_side, endpoint, secure, max_run=run + MARGIN_S, env=env)
    echo.wait_ready()
    return str(endpoint), echo
