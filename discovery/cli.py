"""`agp discover`: what is on the mesh, as a table, as JSON, or live (--watch).

A watch keeps a :class:`~discovery.replica.Replica` fed with the registry's events and beats
(one subscription to both topics, so they come in the order the registry said them) and
takes the registry's state again, whole, whenever the replica finds events lost or the
registry restarted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from discovery.events import Beat, Event, parse_beat, parse_event
from discovery.replica import ApplyResult, Replica
from discovery.service import BEAT_TOPIC, EVENTS_TOPIC, REGISTRY_SERVICE, TOPICS_PREFIX
from discovery.snapshots import fetch_list, fetch_snapshot
from mesh import DeadlineExceeded, Error, Forbidden, Mesh

# what a watch reads, by topic: what to call it (on stderr when it does not decode), parser
_READS: dict[str, tuple[str, Callable[[object], Event | Beat]]] = {
    EVENTS_TOPIC: ("event", parse_event), BEAT_TOPIC: ("beat", parse_beat)}


def render(records: list[dict[str, Any]], load: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table: name, instances, capabilities, load, age."""
    rows = [("NAME", "INSTANCE", "CAPABILITIES", "LOAD", "AGE")]
    for r in sorted(records, key=lambda r: (r["name"], r["instance"])):
        inst = load.get(f"{r['name']}/{r['instance']}", {})
        busy = f"{inst.get('inflight', 0)}/{inst.get('capacity', r.get('capacity', 0))}"
        age = f"{r.get('age', 0):.0f}s" if "age" in r else "-"
        rows.append((r["name"], r["instance"], ",".join(r.get("capabilities", [])) or "-",
                     busy, age))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def _router_load(m: Mesh) -> dict[str, dict[str, Any]]:
    """Each instance's load from the router, which tells admins only: for anyone else the
    table goes without it (the registry's records are everyone's to read)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        services = m.request("agp/router", "services")
    except Forbidden:
        return out
    for svc in services:
        for inst in svc["instances"]:
            out[inst["name"]] = inst
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agp discover", description=__doc__)
    p.add_argument("--endpoint", default=None, help="router endpoint (default: AGP_ROUTER)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--watch", action="store_true", help="keep printing joins and leaves")
    p.add_argument("--seconds", type=float, default=0, help="with --watch: stop after this")
    args = p.parse_args(argv)
    with Mesh.connect(args.endpoint) as m:
        def registry(action: str, data: Any) -> Any:
            return m.request(REGISTRY_SERVICE, action, data)

        def resync(replica: Replica) -> None:
            # a snapshot answered by a registry that has since restarted is refused: again
            for _ in range(3):
                if replica.apply_snapshot(fetch_snapshot(registry)):
                    return

        if not args.watch:
            records = fetch_list(registry)
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                print(render(records, _router_load(m)))
            return 0
        replica = Replica()
        sub = m.subscribe(TOPICS_PREFIX)  # events and beats: both before the snapshot
        resync(replica)
        print(render([r.to_wire() for r in replica.records()], _router_load(m)), flush=True)
        stop_at = time.monotonic() + args.seconds if args.seconds else float("inf")
        while time.monotonic() < stop_at:
            try:
                msg = sub.get(timeout=min(1.0, max(0.01, stop_at - time.monotonic())))
            except DeadlineExceeded:
                continue
            what, parse = _READS.get(msg.topic, ("", None))
            if parse is None:  # another of the registry's topics: not a watch's
                continue
            try:
                item = parse(msg.data)
            except Error as exc:  # not the registry's: said, and skipped
                print(f"skipped an undecodable {what}: {exc}", file=sys.stderr, flush=True)
                continue
            # a beat tells what no event may: a restart nobody registered after, lost last events
            result = (replica.observe_beat(item) if isinstance(item, Beat)
                      else replica.apply(item))
            if result in (ApplyResult.GAP, ApplyResult.OVERFLOW, ApplyResult.RESTARTED):
                # events were lost on the way (a slow watcher), or the registry restarted:
                # its state again, whole, rather than joins and leaves that no longer add up
                resync(replica)
                print(json.dumps({"resync": replica.seq, "epoch": replica.epoch}) if args.json
                      else f"events lost or registry restarted; as of event {replica.seq}:\n"
                      + render([r.to_wire() for r in replica.records()], _router_load(m)),
                      flush=True)
            elif result is ApplyResult.APPLIED and isinstance(item, Event):
                line = {"seq": item.seq, "kind": item.kind.value, **item.record.to_wire()}
                print(json.dumps(line) if args.json else
                      f"{item.kind.value:<6} {item.record.name}/{item.record.instance}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
