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


MAX_TOPIC_SERIES = 1000  # (topic, reason) pairs kept once retired; past it: topic "other"
SUB_REASONS = (("queue_full", "dropped"), ("router_gap", "gaps"), ("lost", "lost"),
               ("callback_error", "callback_errors"))


def add_capped(totals: dict[tuple[str, str], int], key: tuple[str, str], n: int) -> None:
    """``totals[key] += n``, with at most :data:`MAX_TOPIC_SERIES` keys (more go to 'other')."""
    if key not in totals and len(totals) >= MAX_TOPIC_SERIES:
        key = ("other", key[1])
    totals[key] = totals.get(key, 0) + n


def retire(totals: dict[tuple[str, str], int], sub: Any) -> None:
    """Fold a closing subscription's losses into ``totals``: the counters a scrape exports
    must not fall when it closes (Prometheus would read a reset)."""
    topic = sub.prefix.decode(errors="replace")
    for reason, attr in SUB_REASONS:
        n = int(getattr(sub, attr, 0))
        if n:
            add_capped(totals, (topic, reason), n)


def subscription_drops(core: Any) -> dict[tuple[str, str], int]:
    """(topic prefix, reason) -> messages: a subscription's own queue overflowed
    (``queue_full``), the router skipped them for it (``router_gap``), they died with a
    router (``lost``), or its callback raised on them (``callback_error``); open
    subscriptions and those closed already (the side's ``retired``) alike."""
    side = getattr(core, "subs", None)
    lock = getattr(side, "tally_lock", None)
    if lock is None:
        return _drops(side)
    with lock:  # a subscription moves from open to retired under it: counted once
        return _drops(side)


def _drops(side: Any) -> dict[tuple[str, str], int]:
    out = dict(getattr(side, "retired", None) or {})
    subs = getattr(side, "subs", None) or {}
    for prefix, lst in list(subs.items()):
        topic = prefix.decode(errors="replace")
        for s in list(lst):
            for reason, attr in SUB_REASONS:
                n = getattr(s, attr)
                if n:
                    out[(topic, reason)] = out.get((topic, reason), 0) + n
    return out
