"""Run an Agent class as a standalone process (``agp agent NAME`` / ``python -m agents.NAME``).

Settings come from flags, then ``AGP_*`` environment variables, then the class defaults.
SIGTERM and SIGINT drain the agent: it takes nothing new, finishes what is in flight and
leaves. A JSON line ``{"event": "ready", ...}`` on stdout tells a supervisor it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.base import Agent


def build_parser(cls: type[Agent]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"agp agent {cls.name}", description=cls.__doc__)
    env = os.environ.get
    p.add_argument("--endpoint", default=env("AGP_ROUTER"), help="router endpoint")
    p.add_argument("--namespace", default=env("AGP_NAMESPACE", cls.namespace))
    p.add_argument("--name", default=env("AGP_AGENT_NAME", cls.name), help="service name")
    p.add_argument("--instance", default=env("AGP_INSTANCE"))
    p.add_argument("--capacity", type=int, default=int(env("AGP_CAPACITY", cls.capacity)))
    p.add_argument("--weight", type=int, default=int(env("AGP_WEIGHT", cls.weight)))
    p.add_argument("--policy", default=env("AGP_POLICY", cls.policy),
                   choices=["round_robin", "weighted_round_robin", "least_outstanding"])
    p.add_argument("--insecure", action="store_true",
                   default=env("AGP_INSECURE", "") not in ("", "0"),
                   help="development only: no CURVE, no token")
    p.add_argument("--identity", default=env("AGP_IDENTITY"),
                   help="enrolled key name (default: the agent's name); see `agp keys new`")
    p.add_argument("--log-level", default=env("AGP_LOG_LEVEL", "INFO"))
    return p


def run_agent_main(cls: type[Agent], argv: list[str] | None = None) -> int:
    args = build_parser(cls).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.insecure:
        print(f"WARNING: agent {args.name} running --insecure: no authentication, no encryption",
              file=sys.stderr, flush=True)
    security = None
    if not args.insecure:
        from security.home import client_security

        security = client_security(args.identity or args.name)
    agent = cls(endpoint=args.endpoint, namespace=args.namespace, name=args.name,
                instance=args.instance, capacity=args.capacity, weight=args.weight,
                policy=args.policy, security=security)

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)

        def announce(a: Agent) -> None:
            print(json.dumps({"event": "ready", "service": a.service,
                              "instance": a.instance_name, "pid": os.getpid()}), flush=True)

        await agent.run(announce)

    try:
        import uvloop

        uvloop.run(amain())
    except ImportError:  # pragma: no cover
        asyncio.run(amain())
    return 0
