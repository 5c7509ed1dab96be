"""Prometheus metrics for client and agent processes, counted as plain ints on the hot path.

Why not ``prometheus_client.Counter``/``Histogram`` directly: each ``inc()``/``observe()``
takes a lock and walks label dicts, a few microseconds per message, which the client's
fast paths cannot afford. As in the router (``router.metrics``), the hot path bumps ints in
:class:`ClientStats` / :class:`AgentStats`, and collectors turn them into metric families
when Prometheus scrapes. Updates happen on the process's event-loop thread; the GIL makes a
scrape see a consistent-enough snapshot (a counter may lag by one message, never go back).

Names follow the Prometheus conventions: base units (seconds, bytes), ``_total`` on
counters, one metric per meaning with labels for the dimensions:

    agp_client_messages_total{pattern}          requests, sends, publishes, stream chunks
    agp_client_sent_bytes_total{pattern}        payload bytes sent
    agp_client_received_bytes_total             reply payload bytes
    agp_request_duration_seconds{service,outcome}   client-side latency histogram
    agp_client_request_errors_total{code}       failed calls by error code
    agp_client_pending_requests                 calls waiting for a reply
    agp_breaker_state{destination}              0 closed, 1 half-open, 2 open
    agp_client_dropped_total{reason}            messages a client discarded (malformed, unsent)
    agp_client_subscription_dropped_total{topic,reason}   queue_full, router_gap, lost, ...
    agp_agent_messages_total{service,pattern}   inbound requests/sends/streams
    agp_agent_received_bytes_total{service}
    agp_agent_served_total / agp_agent_failed_total{service}
    agp_agent_dropped_total{service,reason}
    agp_agent_inflight{service} / agp_agent_capacity{service}
    agp_agent_handler_duration_seconds{service,action,outcome}   histogram
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from mesh.drop_reasons import add_capped, other_drops, pubsub_drops, subscription_drops
from mesh.histograms import HistogramSet

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
PATTERNS = ("request", "send", "publish", "stream")


# ---------------------------------------------------------------------- client
class _Tracked(NamedTuple):
    """A tracked client's tallies, held here so they outlive it: the client itself only
    weakly (its core can hold it back, so a strong ref would keep it for ever)."""

    client: weakref.ref[Any]
    counters: dict[str, int]  # its Core.counters
    retired: dict[tuple[str, str], int]  # what its closed subscriptions lost
    lock: Any  # its SubscriberSide.tally_lock


class ClientStats:
    """What one process's mesh clients did. Hooks call :meth:`sent` and :meth:`done`."""

    def __init__(self) -> None:
        self.messages = dict.fromkeys(PATTERNS, 0)
        self.bytes_sent = dict.fromkeys(PATTERNS, 0)
        self.bytes_received = 0
        self.errors: dict[str, int] = {}
        self.latency = HistogramSet(("service", "outcome"))
        # AsyncMesh objects, for pending counts and breakers; weak, so a closed client goes
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        # their drop tallies, by id(client); a gone client's are folded into the _gone_*
        # totals (bounded: counter names, topic x reason), so exported counters only grow
        self._tracked: dict[int, _Tracked] = {}
        self._gone_counters: dict[str, int] = {}
        self._gone_topics: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def sent(self, pattern: str, nbytes: int = 0, n: int = 1) -> None:
        self.messages[pattern] = self.messages.get(pattern, 0) + n
        self.bytes_sent[pattern] = self.bytes_sent.get(pattern, 0) + nbytes

    def done(self, service: str, seconds: float, outcome: str = "ok", nbytes: int = 0) -> None:
        """A call finished: ``outcome`` is 'ok' or an error code name (lower case)."""
        self.latency.observe((service, outcome), seconds)
        if outcome == "ok":
            self.bytes_received += nbytes
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def track(self, amesh: Any) -> None:
        """Export this client's pending requests, circuit breakers and drops too. Called
        per request (``observed_request``): a client tracked already returns at once,
        without the lock, the scan of every client or a new record."""
        t = self._tracked.get(id(amesh))
        if t is not None and t.client() is amesh:
            return
        self.clients.add(amesh)
        core = getattr(amesh, "core", None)
        if core is None:
            return
        side = getattr(core, "subs", None)
        with self._lock:
            self._live()  # folds the gone first: an id may be reused
            self._tracked[id(amesh)] = _Tracked(
                weakref.ref(amesh), core.counters, getattr(side, "retired", {}),
                getattr(side, "tally_lock", None) or threading.Lock())

    def _live(self) -> list[Any]:
        """The tracked clients still alive; the tallies of those gone are folded into the
        totals (under ``_lock``: a scrape sees each client's counts once, never twice)."""
        alive = []
        for key, t in list(self._tracked.items()):
            m = t.client()
            if m is not None:
                alive.append(m)
                continue
            del self._tracked[key]
            for name, n in list(t.counters.items()):
                self._gone_counters[name] = self._gone_counters.get(name, 0) + int(n)
            with t.lock:
                retired = list(t.retired.items())
            for topic_reason, n in retired:
                add_capped(self._gone_topics, topic_reason, n)
        return alive

    def drop_tallies(self) -> tuple[list[Any], dict[str, int], dict[tuple[str, str], int]]:
        """(live clients, Core.counters summed over every client ever tracked, subscription
        losses by (topic, reason) likewise): gone clients and closed subscriptions included."""
        with self._lock:
            alive = self._live()
            counters = dict(self._gone_counters)
            by_topic = dict(self._gone_topics)
            for m in alive:
                core = m.core
                for name, n in list(core.counters.items()):
                    counters[name] = counters.get(name, 0) + int(n)
                for key, n in subscription_drops(core).items():
                    by_topic[key] = by_topic.get(key, 0) + n
        return alive, counters, by_topic

    def collect(self) -> Iterator[Any]:
        msgs = CounterMetricFamily("agp_client_messages_total",
                                   "Messages sent by mesh clients, by pattern", labels=["pattern"])
        sent = CounterMetricFamily("agp_client_sent_bytes_total",
                                   "Payload bytes sent by mesh clients, by pattern",
                                   labels=["pattern"])
        for p in sorted(self.messages):
            msgs.add_metric([p], self.messages[p])
            sent.add_metric([p], self.bytes_sent.get(p, 0))
        yield msgs
        yield sent
        yield CounterMetricFamily("agp_client_received_bytes_total",
                                  "Reply payload bytes received", value=self.bytes_received)
        errs = CounterMetricFamily("agp_client_request_errors_total",
                                   "Calls that failed, by error code", labels=["code"])
        for code, n in sorted(self.errors.items()):
            errs.add_metric([code], n)
        yield errs
        yield self.latency.family("agp_request_duration_seconds",
                                  "Client-side request latency, from send to reply")
        pending = GaugeMetricFamily("agp_client_pending_requests",
                                    "Requests waiting for a reply")
        breakers = GaugeMetricFamily("agp_breaker_state",
                                     "Circuit breaker per destination: 0 closed, 1 half-open, "
                                     "2 open", labels=["destination"])
        late = CounterMetricFamily("agp_client_late_replies_total",
                                   "Replies that came after their caller gave up")
        refused = CounterMetricFamily("agp_client_sends_refused_total",
                                      "Sealed fire-and-forget sends an instance refused as not "
                                      "sealed for it (keys older than it; each drops them)")
        unopened = CounterMetricFamily("agp_client_pubsub_unopened_total",
                                       "Pub/sub messages a subscriber could not read (or, "
                                       "sealed, open), by reason", labels=["reason"])
        unsent = CounterMetricFamily("agp_client_publish_dropped_total",
                                     "Publishes dropped before leaving the client, by reason",
                                     labels=["reason"])
        dropped = CounterMetricFamily("agp_client_dropped_total",
                                      "Messages a client discarded, by reason (undecodable, "
                                      "unsent, stale)", labels=["reason"])
        sub_dropped = CounterMetricFamily("agp_client_subscription_dropped_total",
                                          "Pub/sub messages a subscription lost, by reason",
                                          labels=["topic", "reason"])
        n_pending = 0
        states: dict[str, int] = {}
        live, counters, by_topic = self.drop_tallies()
        tracked = {id(m) for m in live}
        for m in [*live, *(m for m in list(self.clients) if id(m) not in tracked)]:
            core = getattr(m, "core", None)
            if core is not None:
                n_pending += len(core.pending)
            for key, b in list((getattr(m, "_breakers", None) or {}).items()):
                dest = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
                states[dest] = max(states.get(dest, 0), breaker_value(b))
        n_late = int(counters.get("late_replies", 0))
        n_refused = int(counters.get("sends_refused", 0))
        by_reason = pubsub_drops(counters)
        other = other_drops(counters)
        pending.add_metric([], n_pending)
        late.add_metric([], n_late)
        refused.add_metric([], n_refused)
        for dest, v in sorted(states.items()):
            breakers.add_metric([dest], v)
        for (kind, reason), n in sorted(by_reason.items()):
            (unopened if kind == "unopened" else unsent).add_metric([reason], n)
        for reason, n in sorted(other.items()):
            dropped.add_metric([reason], n)
        for (topic, reason), n in sorted(by_topic.items()):
            sub_dropped.add_metric([topic, reason], n)
        yield pending
        yield late
        yield refused
        yield breakers
        yield unopened
        yield unsent
        yield dropped
        yield sub_dropped


def breaker_value(breaker: Any) -> int:
    state = getattr(breaker, "state", "closed")
    state = getattr(state, "value", state)
    if isinstance(state, int):
        return state
    return BREAKER_STATES.get(str(state).lower(), 0)


# ---------------------------------------------------------------------- agent
class AgentStats:
    """Per-agent counters the Agent base class does not keep itself (messages, bytes,
    handler latency); served/failed/dropped are read from the agent at scrape time."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.messages: dict[str, int] = {}
        self.bytes_received = 0
        self.handler = HistogramSet(("action", "outcome"))

    def inbound(self, pattern: str, nbytes: int) -> None:
        self.messages[pattern] = self.messages.get(pattern, 0) + 1
        self.bytes_received += nbytes

    def handled(self, action: str, seconds: float, exc: BaseException | None) -> None:
        outcome = "ok" if exc is None else outcome_of(exc)
        self.handler.observe((action, outcome), seconds)

    def collect(self) -> Iterator[Any]:
        a = self.agent
        svc = str(getattr(a, "service", "") or getattr(a, "name", ""))
        msgs = CounterMetricFamily("agp_agent_messages_total", "Inbound calls, by pattern",
                                   labels=["service", "pattern"])
        for p, n in sorted(self.messages.items()):
            msgs.add_metric([svc, p], n)
        yield msgs
        yield _labelled(CounterMetricFamily, "agp_agent_received_bytes_total",
                        "Inbound payload bytes", svc, self.bytes_received)
        yield _labelled(CounterMetricFamily, "agp_agent_served_total",
                        "Calls handled successfully", svc, int(getattr(a, "served", 0)))
        yield _labelled(CounterMetricFamily, "agp_agent_failed_total",
                        "Calls whose handler failed", svc, int(getattr(a, "failed", 0)))
        drops = CounterMetricFamily("agp_agent_dropped_total",
                                    "Messages the agent could not handle or answer, by reason",
                                    labels=["service", "reason"])
        for reason, n in sorted(dict(getattr(a, "dropped", {}) or {}).items()):
            drops.add_metric([svc, reason], n)
        yield drops
        yield _labelled(GaugeMetricFamily, "agp_agent_inflight", "Calls being handled now", svc,
                        len(getattr(a, "_tasks", ()) or ()))
        yield _labelled(GaugeMetricFamily, "agp_agent_capacity", "Calls handled at once", svc,
                        int(getattr(a, "capacity", 0)))
        fam = HistogramMetricFamily("agp_agent_handler_duration_seconds",
                                    "Handler run time, from arrival to reply",
                                    labels=["service", "action", "outcome"])
        for key, h in sorted(self.handler.series.items()):
            fam.add_metric([svc, *key], h.buckets(), h.total)
        yield fam


def _labelled(cls: Any, name: str, doc: str, service: str, value: float) -> Any:
    fam = cls(name, doc, labels=["service"])
    fam.add_metric([service], value)
    return fam


def outcome_of(exc: BaseException, default: str = "handler_error") -> str:
    """A label for how a call ended: the mesh error code in lower case ('overloaded',
    'deadline_exceeded', ...), 'cancelled' for a cancelled task, else ``default``."""
    code = getattr(exc, "code", None)
    if code is not None and hasattr(code, "name"):
        return str(code.name).lower()
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return default


def payload_bytes(frames: Iterable[Any]) -> int:
    """Bytes in payload frames (bytes, memoryviews, numpy arrays alike)."""
    n = 0
    for f in frames:
        n += len(f) if type(f) is bytes else memoryview(f).nbytes
    return n


# ---------------------------------------------------------------------- registration
class StatsCollector(Collector):
    """Exports any objects with a ``collect()`` generator (ClientStats, AgentStats)."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Any]:
        """One family per name and one sample per label set: two agents in a process each
        yield agp_agent_messages_total, and two agents of one service each a series with the
        same labels; strict parsers reject an exposition naming either twice. Same-labelled
        samples are summed (counters, in-flight and capacity gauges, histogram buckets, sums
        and counts all add up across instances)."""
        merged: dict[str, Any] = {}
        for s in list(self.sources):
            for fam in s.collect():
                first = merged.get(fam.name)
                if first is None:
                    merged[fam.name] = fam
                else:
                    first.samples.extend(fam.samples)
        for fam in merged.values():
            fam.samples = _summed(fam.samples)
        yield from merged.values()


def _summed(samples: list[Any]) -> list[Any]:
    """``samples`` with those of one name and label set folded into one (values summed),
    in first-seen order; a list without repeats comes back as it was."""
    index: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    out: list[Any] = []
    for sample in samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        at = index.get(key)
        if at is None:
            index[key] = len(out)
            out.append(sample)
        else:
            out[at] = out[at]._replace(value=out[at].value + sample.value)
    return out


CLIENT: ClientStats | None = None  # set by enable_client_metrics(); hooks test for None
_agent_collector: StatsCollector | None = None


def enable_client_metrics(registry: CollectorRegistry = REGISTRY) -> ClientStats:
    """Start counting client traffic in this process (idempotent)."""
    global CLIENT
    if CLIENT is None:
        CLIENT = ClientStats()
        registry.register(StatsCollector([CLIENT]))
    return CLIENT


def agent_metrics(agent: Any, registry: CollectorRegistry = REGISTRY) -> AgentStats:
    """Count this agent's traffic and export it (one collector serves every agent of the
    process); sets ``agent.metrics`` for the hooks."""
    global _agent_collector
    stats = AgentStats(agent)
    if _agent_collector is None or registry is not REGISTRY:
        coll = StatsCollector([stats])
        registry.register(coll)
        if registry is REGISTRY:
            _agent_collector = coll
    else:
        _agent_collector.sources.append(stats)
    agent.metrics = stats
    return stats


def serve_metrics(port: int, addr: str = "127.0.0.1",
                  registry: CollectorRegistry = REGISTRY, *, client: bool = True) -> int:
    """Serve ``/metrics`` over HTTP in a daemon thread; returns the bound port (0 picks one).
    With ``client`` (and the default registry), this process's mesh clients are counted too."""
    from prometheus_client import start_http_server

    if client and registry is REGISTRY:
        enable_client_metrics()
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_address[1])


def metrics_port_from_env() -> int | None:
    """``AGP_METRICS_PORT`` as an int, or None when unset/empty."""
    value = os.environ.get("AGP_METRICS_PORT", "").strip()
    return int(value) if value else None
