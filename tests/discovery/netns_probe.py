"""A mesh client that a test drives from another network namespace, one JSON line at a time.

``python -m tests.discovery.netns_probe`` connects with ``Mesh.connect()`` and NO endpoint,
so it finds the router over mDNS, prints ``{"event": "ready", "endpoint": ...}``, then answers
each stdin line ``{"id": N, "op": ..., ...}`` with ``{"event": "reply", "id": N, "ok": ...,
"value"|"error": ...}``. Every mesh call has a timeout; EOF on stdin or SIGTERM ends it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from mesh import Error, Mesh

REGISTRY = "agp/system/registry"


class Probe:
    def __init__(self, m: Mesh) -> None:
        self.m = m
        self.received: list[Any] = []
        self._lock = threading.Lock()

    def op_request(self, dest: str, action: str, data: Any = None, timeout: float = 3.0
                   ) -> Any:
        return self.m.request(dest, action, data, timeout=timeout)

    def op_router_instances(self, service: str) -> list[str]:
        return [i["name"] for s in self.m.request("agp/router", "services", timeout=2)
                if s["service"] == service for i in s["instances"]]

    def op_registry(self, name: str) -> list[str]:
        return [r["instance"] for r in self.m.request(REGISTRY, "lookup", {"name": name},
                                                      timeout=2)]

    def op_subscribe(self, topic: str) -> bool:
        def got(msg: Any) -> None:
            with self._lock:
                if len(self.received) < 10_000:
                    self.received.append(msg.data)

        self.m.subscribe(topic, got, timeout=5)
        return True

    def op_received(self) -> list[Any]:
        with self._lock:
            return list(self.received)

    def op_publish(self, topic: str, items: list[Any]) -> int:
        for item in items:
            self.m.publish(topic, item)
        self.m.flush(timeout=5, wait=True)
        return len(items)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Mesh.connect(timeout=15) as m:
        probe = Probe(m)
        print(json.dumps({"event": "ready", "endpoint": m.core.endpoint}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            fn = getattr(probe, f"op_{cmd.pop('op')}")
            ident = cmd.pop("id")
            try:
                reply = {"ok": True, "value": fn(**cmd)}
            except Error as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps({"event": "reply", "id": ident, **reply}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
