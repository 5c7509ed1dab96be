"""The supervisor's scaling decision, free of processes and sockets: fed the router's view
of a service (queued, in flight, capacity) and the time, it says "up", "down" or nothing.

A service is *hot* while its router queue holds more than ``up_queue`` requests or its
instances are at least ``up_load`` busy, and *idle* while nothing is queued or in flight
(``agents.supervisor_config.Scaling``). Only an unbroken stretch counts, from the first
look that saw it: hot for ``up_after`` seconds adds one replica (up to the service's
``max``), idle for ``down_after`` removes one (down to ``min``), and after a change the
service is left alone for ``cooldown`` seconds while the new replica warms up or the old
one drains.
"""

from __future__ import annotations

from typing import Literal

from agents.supervisor_config import Scaling

Decision = Literal["up", "down"] | None


class ScalePolicy:
    """Per-service hot/idle clocks and the last change; :meth:`decide` once per look."""

    def __init__(self, scaling: Scaling) -> None:
        self.scaling = scaling
        self._hot_since: dict[str, float] = {}
        self._idle_since: dict[str, float] = {}
        self._last_change: dict[str, float] = {}

    def decide(self, service: str, now: float, *, queued: int, inflight: int, capacity: int,
               replicas: int, minimum: int, maximum: int) -> Decision:
        """What to do with ``service`` now; a decision starts its cooldown."""
        sc = self.scaling
        hot = queued > sc.up_queue or (capacity > 0 and inflight / capacity >= sc.up_load)
        idle = queued == 0 and inflight == 0
        # each clock runs from the first look its condition held at, and stops when it breaks
        hot_since = _clock(self._hot_since, service, now, hot)
        idle_since = _clock(self._idle_since, service, now, idle)
        if now - self._last_change.get(service, -1e9) < sc.cooldown:
            return None
        if hot_since is not None and now - hot_since >= sc.up_after and replicas < maximum:
            return self._changed(service, now, "up")
        if idle_since is not None and now - idle_since >= sc.down_after and replicas > minimum:
            return self._changed(service, now, "down")
        return None

    def _changed(self, service: str, now: float, decision: Decision) -> Decision:
        self._last_change[service] = now
        self._hot_since.pop(service, None)
        self._idle_since.pop(service, None)
        return decision


def _clock(since: dict[str, float], service: str, now: float, holds: bool) -> float | None:
    if holds:
        return since.setdefault(service, now)
    since.pop(service, None)
    return None
