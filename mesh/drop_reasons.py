"""How a client's drop counters become the reasons of its metrics (``mesh.metrics``).

The hot path counts drops as plain ints in ``Core.counters`` (names like ``malformed``,
``publish_dropped_e2e_no_key``, ``pubsub_refused_forbidden``) and on each subscription;
these functions, fed those counters and nothing else, say which metric and reason each one
is exported under, so every drop shows up once, by reason.
"""

from __future__ import annotations

from typing import Any


def pubsub_drops(counters: dict[str, int]) -> dict[tuple[str, str], int]:
    """Core.counters' pub/sub drops by reason: ``pubsub_refused_<reason>`` (messages not
    read or opened) and ``publish_dropped`` (all publishes dropped in the client), of which
    ``publish_dropped_e2e_<reason>`` waited for a topic key and ``publish_dropped_<code>``
    met another error (the client closed); the rest met a full queue."""
    out: dict[tuple[str, str], int] = {}
    explained = 0
    for name, n in list(counters.items()):
        if name.startswith("pubsub_refused_"):
            out[("unopened", name[15:])] = int(n)
        elif name.startswith("publish_dropped_"):
            reason = name[20:] if name.startswith("publish_dropped_e2e_") else name[16:]
            out[("unsent", reason)] = int(n)
            explained += int(n)
    rest = int(counters.get("publish_dropped", 0)) - explained
    if rest > 0:
        out[("unsent", "queue_full")] = rest
    return out


_EXPORTED_APART = ("late_replies", "sends_refused", "publish_dropped", "pubsub_refused_")


def other_drops(counters: dict[str, int]) -> dict[str, int]:
    """Core.counters not exported by a metric of their own: each a reason of
    agp_client_dropped_total (zeros too, so a dashboard sees the series from the start)."""
    return {name: int(n) for name, n in list(counters.items())
            if not name.startswith(_EXPORTED_APART)}


def subscription_drops(core: Any) -> dict[tuple[str, str], int]:
    """(topic prefix, reason) -> messages: a subscription's own queue overflowed
    (``queue_full``), the router skipped them for it (``router_gap``), they died with a
    router (``lost``), or its callback raised on them (``callback_error``)."""
    out: dict[tuple[str, str], int] = {}
    subs = getattr(getattr(core, "subs", None), "subs", None) or {}
    for prefix, lst in list(subs.items()):
        topic = prefix.decode(errors="replace")
        for s in list(lst):
            for reason, n in (("queue_full", s.dropped), ("router_gap", s.gaps),
                              ("lost", s.lost), ("callback_error", s.callback_errors)):
                if n:
                    out[(topic, reason)] = out.get((topic, reason), 0) + n
    return out
