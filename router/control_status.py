"""What the control plane knows about the mesh, refreshed once a second in one thread.

Why a poller and not a request per page view: every dashboard, every SSE stream and every
Prometheus scrape read the same snapshot, so ten open dashboards cost the router one
``stats`` and one ``services`` request a second, not ten. Rates (requests/s, drops/s) are
differences between consecutive snapshots; the last :data:`HISTORY` points feed the
dashboard's sparklines.

Sources: the router's own service ``agp/router`` (``stats``, ``services``) over the mesh as
an ordinary client (so the control plane runs beside the router or on another host), or the
router object itself when embedded in the router's process; the discovery registry
(``agp/system/registry list``) when one runs; the workflow store (``AGP_WORKFLOW_STORE``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("agp.control")

HISTORY = 120  # points kept for sparklines (two minutes at one a second)
MAX_RUNS = 20  # workflow runs shown
SERVED_FORGET = 3600.0  # s: a service (or instance) unseen this long leaves agp_mesh_served_total
MAX_SERVED_INSTANCES = 10_000  # instances remembered for it; past it the longest unseen go
RATE_KEYS = ("requests", "replies", "sends", "published_messages", "stream_chunks",
             "errors_sent")

Fetch = Callable[[], tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]] | None]]


def mesh_fetcher(mesh: Any, timeout: float = 2.0) -> Fetch:
    """Fetch (stats, services, registry records or None) over the mesh."""

    def fetch() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]] | None]:
        from mesh.errors import Error, NoSuchService

        t0 = time.perf_counter()
        stats = dict(mesh.request("agp/router", "stats", timeout=timeout))
        stats["rtt_ms"] = (time.perf_counter() - t0) * 1000.0
        services = list(mesh.request("agp/router", "services", timeout=timeout))
        registry = None
        # only ask a registry that runs: a request to a missing one would count as a drop
        if any(s.get("service") == "agp/system/registry" for s in services):
            try:
                registry = mesh.request("agp/system/registry", "list", timeout=timeout)
            except NoSuchService:
                registry = None
            except Error as exc:
                log.debug("registry list: %s", exc)
        return stats, services, registry

    return fetch


def router_fetcher(router: Any) -> Fetch:
    """Read an in-process Router directly (embedded control plane). The router thread may
    change its dicts meanwhile; a copy that races is simply taken again."""

    def fetch() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]] | None]:
        for _ in range(5):
            try:
                stats = {**router.stats.as_dict(), "peers": len(router.peers),
                         "router_id": router.config.router_id,
                         "uptime": time.time() - router.started_at}
                return stats, router.table.snapshot(), None
            except RuntimeError:  # dictionary changed size during iteration
                continue
        raise RuntimeError("router state kept changing while read")

    return fetch


class StatusCollector:
    """Polls the sources every ``interval`` s; ``status`` is the latest JSON-able snapshot."""

    def __init__(self, fetch: Fetch | None, *, store_url: str | None = None,
                 interval: float = 1.0) -> None:
        self.fetch = fetch
        self.store_url = store_url
        self.interval = interval
        self.version = 0
        self.status: dict[str, Any] = {"ok": False, "error": "starting", "time": time.time(),
                                       "services": [], "router": {}, "rates": {},
                                       "history": {}, "registry": None, "workflows": None}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: tuple[float, dict[str, Any], dict[str, int]] | None = None
        self._history: dict[str, deque[float]] = {}
        self._store: Any = None
        # agp_mesh_served_total must only grow, though instances come and go: per service the
        # sum of each instance's increases; per (service, instance): last count, last seen
        self._served_total: dict[str, int] = {}
        self._served_seen: dict[str, float] = {}
        self._served_last: dict[tuple[str, str], tuple[int, float]] = {}
        self._served_router: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> StatusCollector:
        self._thread = threading.Thread(target=self._run, name="agp-control-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._store = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                status = self.poll()
            except Exception as exc:  # a poll must never kill the thread
                log.exception("status poll failed")
                status = {**self.status, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self._publish(status)
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - began)))

    def _publish(self, status: dict[str, Any]) -> None:
        with self._cond:
            self.status = status
            self.version += 1
            self._cond.notify_all()

    def wait_newer(self, version: int, timeout: float) -> tuple[dict[str, Any] | None, int]:
        """The status once it is newer than ``version`` (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.version <= version and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, self.version
                self._cond.wait(remaining)
            if self.version <= version:
                return None, self.version
            return self.status, self.version

    # ------------------------------------------------------------------ one round
    def poll(self) -> dict[str, Any]:
        now = time.time()
        status: dict[str, Any] = {"time": now, "ok": True, "error": None}
        router: dict[str, Any] = {}
        services: list[dict[str, Any]] = []
        registry: list[dict[str, Any]] | None = None
        rtt = None
        if self.fetch is None:
            status.update(ok=False, error="no router source configured")
        else:
            try:
                router, services, registry = self.fetch()
                rtt = router.pop("rtt_ms", None)
            except Exception as exc:
                status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        served = {s["service"]: sum(int(i.get("served", 0)) for i in s.get("instances", []))
                  for s in services}
        rates, svc_rates = self._rates(now, router, served)
        if router or services:
            self._count_served(time.monotonic(), router.get("router_id"), services)
        status["served_totals"] = dict(self._served_total)
        status["router"] = router
        status["rtt_ms"] = None if rtt is None else round(rtt, 3)
        status["rates"] = rates
        status["services"] = [_service_view(s, svc_rates.get(s["service"], 0.0))
                              for s in sorted(services, key=lambda s: s["service"])]
        status["registry"] = registry
        status["workflows"] = self._workflows()
        self._remember(rates, status["rtt_ms"], router)
        status["history"] = {k: list(v) for k, v in self._history.items()}
        return status

    def _rates(self, now: float, router: dict[str, Any], served: dict[str, int]
               ) -> tuple[dict[str, float], dict[str, float]]:
        rates: dict[str, float] = {}
        svc_rates: dict[str, float] = {}
        prev = self._prev
        if router:
            counts = {k: int(router.get(k, 0)) for k in RATE_KEYS}
            counts["drops"] = sum(dict(router.get("drops", {})).values())
            counts["denials"] = sum(dict(router.get("denials", {})).values())
            if prev is not None and router.get("router_id") == prev[1].get("router_id"):
                dt = max(1e-3, now - prev[0])
                for k, v in counts.items():
                    rates[k] = round(max(0, v - prev[1].get(k, 0)) / dt, 2)
                for name, v in served.items():
                    svc_rates[name] = round(max(0, v - prev[2].get(name, v)) / dt, 2)
            self._prev = (now, {**counts, "router_id": router.get("router_id")}, served)
        return rates, svc_rates

    def _count_served(self, now: float, router_id: Any,
                      services: list[dict[str, Any]]) -> None:
        """Add each instance's increase since the last poll to its service's total: one that
        left keeps what it served; one whose count went down (restarted, or a new router)
        adds its new count. Bounded: what stays unseen for :data:`SERVED_FORGET` goes."""
        last = self._served_last
        if router_id != self._served_router:  # another router: its counts start afresh
            self._served_router = router_id
            last.clear()
        for svc in services:
            name = str(svc.get("service", ""))
            total = self._served_total.get(name, 0)
            for inst in svc.get("instances", []):
                key = (name, str(inst.get("name", "")))
                count = int(inst.get("served", 0))
                prev = last.get(key)
                total += count - prev[0] if prev is not None and count >= prev[0] else count
                last[key] = (count, now)
            self._served_total[name] = total
            self._served_seen[name] = now
        for name in [n for n, t in self._served_seen.items() if now - t > SERVED_FORGET]:
            del self._served_seen[name]
            self._served_total.pop(name, None)
        stale = [k for k, (_, t) in last.items() if now - t > SERVED_FORGET]
        if len(last) - len(stale) > MAX_SERVED_INSTANCES:
            stale = sorted(last, key=lambda k: last[k][1])[:len(last) - MAX_SERVED_INSTANCES]
        for k in stale:
            del last[k]

    def _remember(self, rates: dict[str, float], rtt: float | None,
                  router: dict[str, Any]) -> None:
        points = {"t": time.time(), "requests": rates.get("requests", 0.0),
                  "publishes": rates.get("published_messages", 0.0),
                  "drops": rates.get("drops", 0.0), "denials": rates.get("denials", 0.0),
                  "rtt_ms": rtt if rtt is not None else 0.0}
        for k, v in points.items():
            self._history.setdefault(k, deque(maxlen=HISTORY)).append(v)

    def _workflows(self) -> list[dict[str, Any]] | None:
        if not self.store_url:
            return None
        try:
            if self._store is None:
                from mesh.workflow import open_store

                self._store = open_store(self.store_url)
            out = []
            for run in self._store.list_runs(limit=MAX_RUNS):
                steps = self._store.step_states(run.id)
                out.append({
                    "id": run.id, "name": run.name, "state": run.state.value,
                    "created": run.created, "updated": run.updated, "error": run.error,
                    "steps": [{"name": s.name, "state": s.state.value, "attempt": s.attempt,
                               "duration": None if s.duration is None else round(s.duration, 3),
                               "instance": s.instance, "error": s.error}
                              for s in steps.values()],
                })
            return out
        except Exception as exc:
            log.warning("workflow store %s: %s", self.store_url, exc)
            return [{"id": "", "name": "(store unreadable)", "state": "failed", "error": str(exc),
                     "created": 0, "updated": 0, "steps": []}]


def _service_view(svc: dict[str, Any], rate: float) -> dict[str, Any]:
    """A service row with totals: capacity, in flight, load (0..1), and a latency estimate.

    The latency is Little's law (L = in flight / throughput) from two snapshots: the router
    keeps no per-request timing, and this costs it nothing. It is a rough mean, shown as such.
    """
    instances = list(svc.get("instances", []))
    capacity = sum(int(i.get("capacity", 0)) for i in instances)
    inflight = sum(int(i.get("inflight", 0)) for i in instances)
    latency = round(1000.0 * inflight / rate, 1) if rate > 0 and inflight else None
    return {**svc, "capacity": capacity, "inflight": inflight,
            "served": sum(int(i.get("served", 0)) for i in instances),
            "load": round(inflight / capacity, 3) if capacity else 0.0,
            "rate": rate, "latency_ms_est": latency}


class ControlCollector(Collector):
    """Prometheus view of the control plane's snapshot: the mesh as the control plane sees
    it, and workflow run and step outcomes from the store."""

    def __init__(self, status: StatusCollector, server: Any = None) -> None:
        self.source = status
        self.server = server  # a ControlServer: its refused and cut-off connections

    def collect(self) -> Iterator[Any]:
        st = self.source.status
        yield GaugeMetricFamily("agp_control_router_up", "1 when the last poll reached the router",
                                value=1 if st.get("ok") else 0)
        if self.server is not None:
            dropped = CounterMetricFamily("agp_control_http_dropped_total",
                                          "Control-plane HTTP connections refused or cut off, "
                                          "by reason", labels=["reason"])
            for reason, n in sorted(self.server.dropped().items()):
                dropped.add_metric([reason], n)
            yield dropped
        rtt = st.get("rtt_ms")
        if rtt is not None:
            yield GaugeMetricFamily("agp_control_router_rtt_seconds",
                                    "Round trip of the control plane's poll to the router",
                                    value=rtt / 1000.0)
        fams = {
            "instances": GaugeMetricFamily("agp_mesh_instances", "Instances per service",
                                           labels=["service"]),
            "capacity": GaugeMetricFamily("agp_mesh_capacity", "Capacity per service",
                                          labels=["service"]),
            "inflight": GaugeMetricFamily("agp_mesh_inflight", "In flight per service",
                                          labels=["service"]),
            "queued": GaugeMetricFamily("agp_mesh_queue_depth", "Queued per service",
                                        labels=["service"]),
        }
        served = CounterMetricFamily("agp_mesh_served_total", "Replies per service, by every "
                                     "instance seen (gone ones too)", labels=["service"])
        for s in st.get("services", []):
            name = s["service"]
            fams["instances"].add_metric([name], len(s.get("instances", [])))
            fams["capacity"].add_metric([name], s.get("capacity", 0))
            fams["inflight"].add_metric([name], s.get("inflight", 0))
            fams["queued"].add_metric([name], s.get("queued", 0))
        for name, n in sorted(dict(st.get("served_totals") or {}).items()):
            served.add_metric([name], n)
        yield from fams.values()
        yield served
        workflows = st.get("workflows")
        if workflows is not None:
            runs = GaugeMetricFamily("agp_workflow_runs", "Recent workflow runs by state",
                                     labels=["state"])
            steps = GaugeMetricFamily("agp_workflow_steps",
                                      "Steps of recent workflow runs by outcome",
                                      labels=["state"])
            run_counts: dict[str, int] = {}
            step_counts: dict[str, int] = {}
            for run in workflows:
                run_counts[run["state"]] = run_counts.get(run["state"], 0) + 1
                for step in run.get("steps", []):
                    step_counts[step["state"]] = step_counts.get(step["state"], 0) + 1
            for k, v in sorted(run_counts.items()):
                runs.add_metric([k], v)
            for k, v in sorted(step_counts.items()):
                steps.add_metric([k], v)
            yield runs
            yield steps
