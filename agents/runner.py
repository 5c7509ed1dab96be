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
from typing import TYPE_CHECKING, Any

from mesh.argtypes import int_in, seconds
from mesh.errors import ConfigError

if TYPE_CHECKING:
    from agents.base import Agent


_ENV_TO_FILE = {"AGP_ROUTER": "endpoint", "AGP_NAMESPACE": "namespace",
                "AGP_AGENT_NAME": "name", "AGP_INSTANCE": "instance", "AGP_CAPACITY": "capacity",
                "AGP_WEIGHT": "weight", "AGP_POLICY": "policy", "AGP_INSECURE": "insecure",
                "AGP_IDENTITY": "identity", "AGP_LOG_LEVEL": "log_level",
                "AGP_DRAIN_TIMEOUT": "drain_timeout"}
_FILE_KEYS = ("endpoint", "namespace", "name", "instance", "capacity", "weight", "policy",
              "identity", "insecure", "log_level", "drain_timeout")


def load_config(path: str) -> dict[str, Any]:
    """An agent's settings from a TOML file (keys as the flags, with underscores)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from mesh.errors import ConfigError

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from None
    unknown = sorted(set(doc) - set(_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {list(_FILE_KEYS)}")
    return doc


def build_parser(cls: type[Agent], file: dict[str, Any] | None = None
                 ) -> argparse.ArgumentParser:
    """Flags beat the environment (AGP_*), which beats the config file, which beats the
    class defaults."""
    p = argparse.ArgumentParser(prog=f"agp agent {cls.name}", description=cls.__doc__)
    file = file or {}

    def env(key: str, default: Any = None) -> Any:
        if key in os.environ:
            return os.environ[key]
        return file.get(_ENV_TO_FILE[key], default)

    p.add_argument("--config", default=None, help="a TOML file of these settings")
    p.add_argument("--endpoint", default=env("AGP_ROUTER"), help="router endpoint")
    p.add_argument("--namespace", default=env("AGP_NAMESPACE", cls.namespace))
    p.add_argument("--name", default=env("AGP_AGENT_NAME", cls.name), help="service name")
    p.add_argument("--instance", default=env("AGP_INSTANCE"))
    # (string defaults go through ``type`` too: a bad AGP_* value is a usage error, exit 2)
    p.add_argument("--capacity", type=positive_integer,
                   default=str(env("AGP_CAPACITY", cls.capacity)))
    p.add_argument("--weight", type=positive_integer, default=str(env("AGP_WEIGHT", cls.weight)))
    p.add_argument("--policy", default=env("AGP_POLICY", cls.policy),
                   choices=["round_robin", "weighted_round_robin", "least_outstanding"])
    p.add_argument("--insecure", action="store_true",
                   default=str(env("AGP_INSECURE", "")).lower() not in ("", "0", "false"),
                   help="development only: no CURVE, no token")
    p.add_argument("--identity", default=env("AGP_IDENTITY"),
                   help="enrolled key name (default: the agent's name); see `agp keys new`")
    p.add_argument("--metrics-port", type=port_number,
                   default=os.environ.get("AGP_METRICS_PORT") or None,
                   help="serve Prometheus /metrics on 127.0.0.1 here (0 picks a port)")
    p.add_argument("--log-level", default=env("AGP_LOG_LEVEL", "INFO"))
    p.add_argument("--drain-timeout", type=seconds,
                   default=str(env("AGP_DRAIN_TIMEOUT", cls.drain_timeout)),
                   help="seconds a SIGTERM waits for handlers in flight; a handler thread "
                        "still running after them does not keep the process up")
    p.add_argument("--no-mdns", action="store_true",
                   help="neither find the router nor announce this agent over mDNS "
                        "(also AGP_MDNS=0)")
    return p


positive_integer = int_in(1, sys.maxsize, "positive_integer")
port_number = int_in(0, 65535, "port_number")


def run_agent_main(cls: type[Agent], argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.environ.get("AGP_AGENT_CONFIG"))
    known, _ = pre.parse_known_args(argv)
    file = load_config(known.config) if known.config else None
    args = build_parser(cls, file).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.insecure:
        print(f"WARNING: agent {args.name} running --insecure: no authentication, no encryption",
              file=sys.stderr, flush=True)
    security = None
    if not args.insecure:
        from security.home import client_security

        try:
            security = client_security(args.identity or args.name)
        except ConfigError as exc:  # no keys yet: say what to run, not a traceback
            print(f"agent {args.name}: {exc.message}", file=sys.stderr, flush=True)
            return 2
    from discovery.presence import AgentPresence, lan_router

    # no endpoint anywhere: a router on the LAN whose key is the pinned one (mDNS)
    args.endpoint = args.endpoint or lan_router(security, enabled=not args.no_mdns)
    presence = AgentPresence(enabled=not args.no_mdns)
    agent = cls(endpoint=args.endpoint, namespace=args.namespace, name=args.name,
                instance=args.instance, capacity=args.capacity, weight=args.weight,
                policy=args.policy, security=security)
    agent.drain_timeout = args.drain_timeout
    from mesh import metrics, telemetry

    telemetry.setup_tracing(agent.service)  # exports only when OTLP or AGP_TRACE_FILE is set
    metrics_port = None
    if args.metrics_port is not None:
        metrics.agent_metrics(agent)
        metrics_port = metrics.serve_metrics(args.metrics_port)

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)

        def announce(a: Agent) -> None:
            print(json.dumps({"event": "ready", "service": a.service,
                              "instance": a.instance_name, "pid": os.getpid(),
                              "metrics_port": metrics_port}), flush=True)
            presence.start(service=a.service, instance=a.instance, public_key=a.public_key,
                           version=a.version)

        await agent.run(announce)
        if agent.left_running:  # told to stop (ctx.cancelled) and did not: their threads
            # would hold the exit (the interpreter and the loop's executor join them)
            presence.close()
            logging.getLogger("agp.agent").warning(
                "leaving %d handler(s) still running after the %gs drain",
                agent.left_running, args.drain_timeout)
            _leave_now(0)

    try:
        import uvloop

        uvloop.run(amain())
    except ImportError:  # pragma: no cover
        asyncio.run(amain())
    finally:
        presence.close()  # mDNS goodbyes
    return 0


def _leave_now(code: int) -> None:
    """Exit without joining threads, after flushing what the process wrote and traced."""
    from mesh import telemetry

    telemetry.shutdown_tracing()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
