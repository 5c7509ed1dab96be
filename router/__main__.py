"""`python -m router` (also `agp router`): run the data plane until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from mesh.argtypes import int_in
from router.config import RouterConfig
from router.server import Router


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from security.tokens import MAX_TTL

    p = parser or argparse.ArgumentParser(prog="agp router", description=__doc__)
    cfg = RouterConfig()
    p.add_argument("--bind", default=cfg.bind, help="ROUTER endpoint for every peer")
    p.add_argument("--pub-bind", default=cfg.pub_bind, help="XPUB endpoint for subscribers")
    p.add_argument("--max-message-bytes", type=int, default=cfg.max_message_bytes)
    p.add_argument("--max-queue", type=int, default=cfg.max_queue)
    p.add_argument("--pub-hwm", type=int, default=cfg.pub_hwm,
                   help="messages queued per subscriber before the slowest loses them")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    p.add_argument("--control-port", type=int, default=None,
                   help="run the control plane (dashboard, /api, /metrics) in this process")
    p.add_argument("--insecure", action="store_true",
                   help="development only: no CURVE, no tokens, no RBAC")
    p.add_argument("--home", default=None, help="AGP_HOME: keys, trust store, auth, policy")
    p.add_argument("--policy", default=None, help="RBAC policy file (default: HOME/policies.json)")
    p.add_argument("--auth-port", type=int, default=7780,
                   help="OAuth2 token endpoint (HTTP on 127.0.0.1; 0 picks a port)")
    p.add_argument("--token-ttl", type=int_in(1, MAX_TTL, "token_ttl"), default=300,
                   help="access token lifetime, seconds (at most a day)")
    p.add_argument("--log-level", default="INFO")
    return p


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.insecure:
        print("WARNING: router running --insecure: no authentication, no encryption, no RBAC",
              file=sys.stderr, flush=True)
    config = RouterConfig(bind=args.bind, pub_bind=args.pub_bind,
                          max_message_bytes=args.max_message_bytes, max_queue=args.max_queue,
                          pub_hwm=args.pub_hwm, metrics_port=args.metrics_port)
    secure = None
    if not args.insecure:
        from security.server import secure_router

        secure = secure_router(args.home, policy=args.policy, auth_port=args.auth_port,
                               token_ttl=args.token_ttl)
    router = Router(config, access=secure.access if secure else None,
                    server_keypair=secure.server_keypair if secure else None)
    router.start()
    from mesh import telemetry

    telemetry.setup_tracing("agp-router")  # hop spans for sampled requests, when configured
    control = None
    if args.control_port is not None:
        import os

        from router.control import embedded

        control = embedded(router, port=args.control_port,
                           access=secure.access if secure else None,
                           store_url=os.environ.get("AGP_WORKFLOW_STORE"))
    if args.metrics_port is not None:
        from prometheus_client import REGISTRY, start_http_server

        from router.metrics import RouterCollector

        REGISTRY.register(RouterCollector(router))
        if secure is not None:
            REGISTRY.register(secure.http)  # agp_token_endpoint_refused_total
        start_http_server(args.metrics_port, addr="127.0.0.1")

    def on_signal(signum: int, frame: Any) -> None:
        router.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = {"event": "ready", "router": router.endpoint, "pub": router.pub_endpoint,
             "router_id": config.router_id}
    if secure is not None:
        ready.update(server_key=secure.server_keypair[0].decode(), auth=secure.http.url)
    if control is not None:
        ready["control"] = control.url
    print(json.dumps(ready), flush=True)
    announcer = _announce(router, config.router_id)
    try:
        router.run()
    finally:
        if announcer is not None:
            announcer.close()
        if control is not None:
            control.stop()
        if secure is not None:
            secure.stop()
    return 0


def _announce(router: Router, router_id: str) -> Any:
    """Announce ``_agp._tcp.local.`` (server key, ports) unless AGP_MDNS=0; clients with no
    endpoint find the router so, and trust it only if the key matches their pinned key."""
    import os
    import threading

    from discovery.mdns import Announcer, mdns_enabled
    from discovery.mdns_config import bound_addresses

    if not mdns_enabled():
        return None
    port = int(router.endpoint.rsplit(":", 1)[1])
    pub_port = int(router.pub_endpoint.rsplit(":", 1)[1])
    key = router.server_keypair[0].decode() if router.server_keypair else "0" * 40
    announcer = Announcer(role="router", name=router_id, server_key=key, port=port,
                          sub_port=pub_port, mesh=os.environ.get("AGP_MESH", "default"),
                          addresses=bound_addresses(router.endpoint))

    def start() -> None:  # probing takes ~2 s: never delay serving for it
        try:
            announcer.start()
        except Exception as exc:  # no multicast here: explicit endpoints still work
            logging.getLogger("agp.router").warning("mDNS announce failed: %s", exc)

    threading.Thread(target=start, name="agp-mdns", daemon=True).start()
    return announcer


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
