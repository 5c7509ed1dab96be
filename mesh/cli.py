"""The ``agp`` command: one entry for every process and tool of agp-mesh."""

from __future__ import annotations

import argparse
import importlib
import sys

AGENTS = {
    "echo": "agents.echo",
    "registry": "discovery.service",
    "data_analyst": "agents.data_analyst",
    "ml_trainer": "agents.ml_trainer",
    "inference_service": "agents.inference_service",
    "notification": "agents.notification",
    "orchestrator": "agents.orchestrator",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="agp", description="agp-mesh: AI agents on a ZeroMQ mesh")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("router", help="run the data plane (ROUTER/DEALER router + XPUB proxy)",
                   add_help=False)
    sub.add_parser("agent", help="run an agent: agp agent NAME [flags]", add_help=False)
    sub.add_parser("registry", help="run the discovery registry service", add_help=False)
    sub.add_parser("discover", help="what is on the mesh: agp discover [--json] [--watch]",
                   add_help=False)
    sub.add_parser("workflow", help="run, watch, cancel, resume and prune workflows: agp workflow "
                   "{run,status,cancel,resume,prune}", add_help=False)
    sub.add_parser("keys", help="identities: agp keys new|enroll|revoke|list", add_help=False)
    sub.add_parser("demo", help="the main job on embedded defaults: a local mesh, every pattern")
    sub.add_parser("up", help="start a local mesh from a config: agp up [--config mesh.toml]",
                   add_help=False)
    sub.add_parser("down", help="stop everything `agp up` started", add_help=False)
    sub.add_parser("status", help="processes, restarts and load of the local mesh",
                   add_help=False)
    sub.add_parser("control", help="run the control plane (dashboard, /metrics, admin API)",
                   add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "router":
        from router.__main__ import main as router_main

        return router_main(rest)
    if command == "agent":
        if not rest or rest[0] not in AGENTS:
            print(f"usage: agp agent {{{','.join(AGENTS)}}} [flags]", file=sys.stderr)
            return 2
        module = importlib.import_module(AGENTS[rest[0]])
        agent_cls = next(v for v in vars(module).values()
                         if isinstance(v, type) and getattr(v, "_actions", None)
                         and v.__module__ == module.__name__)
        return agent_cls.main(rest[1:])
    if command == "registry":
        from discovery.service import Registry

        return Registry.main(rest)
    if command == "discover":
        from discovery.cli import main as discover_main

        return discover_main(rest)
    if command == "workflow":
        from agents.workflow_cli import main as workflow_main

        return workflow_main(rest)
    if command == "keys":
        from security.cli import main as keys_main

        return keys_main(rest)
    if command == "demo":
        from agents.demo import main as demo_main

        return demo_main()
    if command in ("up", "down", "status"):
        from agents.supervisor_cli import main as supervisor_main

        return supervisor_main([command, *rest])
    if command == "control":
        from router.control import main as control_main

        return control_main(rest)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
