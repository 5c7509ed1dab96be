"""Router settings, with the defaults a local mesh runs on."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from mesh.wire import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_ROUTER_ENDPOINT = "tcp://127.0.0.1:7700"
DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:7701"


@dataclass
class RouterConfig:
    """Keyword settings of a router; every field has the default a local mesh uses."""

    bind: str = field(
        default_factory=lambda: os.environ.get("AGP_ROUTER_BIND", DEFAULT_ROUTER_ENDPOINT))
    pub_bind: str = field(
        default_factory=lambda: os.environ.get("AGP_PUB_BIND", DEFAULT_PUB_ENDPOINT))
    heartbeat_interval: float = 1.0  # seconds between heartbeats to each peer
    liveness: float = 3.0  # a peer silent this long is dead (detection < 5 s)
    tick: float = 0.1  # housekeeping period: heartbeats, liveness, queue deadlines
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = 10_000  # requests waiting per service before OVERLOADED
    default_timeout_ms: int = 30_000
    hwm: int = 100_000  # per-peer queue at the router socket (messages)
    # per-subscriber queue at the XPUB socket, in PUBLISH batches (each up to 4096 messages
    # or 256 KiB): this bounds a slow subscriber's backlog; past it the slowest loses
    # messages, counted through its sequence gaps
    pub_hwm: int = 10_000
    router_id: str = field(default_factory=lambda: secrets.token_hex(6))
    metrics_port: int | None = None  # serve /metrics on this port when set
    drain_batch: int = 2000  # messages handled per wake-up before housekeeping runs
