"""Keeping a run's lease while this process drives it (the rules are in
:mod:`mesh.workflow.owner`).

A :class:`LeaseKeeper` renews ``lease_until`` every ``lease / 3`` by a compare-and-swap on
the run being ``running`` and owned here, so a renewal can never revive a run that another
process took over. Two things end it, each reported once to ``on_lost``: the swap fails
(another process cancelled, ended or took over the run), or the lease runs out on this
host's clock while the store could not be reached to renew it. From then on another host
may take the run over, so this one must stop its steps first (the grace other hosts add
covers the skew between the clocks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Final

from mesh.workflow.model import LeaseLost, RunConflict, RunState
from mesh.workflow.store import Store

log = logging.getLogger(__name__)

MIN_PAUSE: Final = 0.01  # s: the shortest wait between two renewal tries
LOG_EVERY: Final = 20  # of a streak of failed renewals, log the first and every 20th

LostHook = Callable[[RunConflict | None], None]
"""``on_lost(conflict)``: the failed swap, or None when the lease ran out unrenewed."""


class LeaseKeeper:
    """Renews one run's lease in the background on the running loop; ``until`` is the
    lease as last written (epoch seconds)."""

    def __init__(self, store: Store, run_id: str, owner: str, *, lease: float, until: float,
                 on_lost: LostHook) -> None:
        self.store, self.run_id, self.owner = store, run_id, owner
        self.lease, self.until = lease, until
        self.on_lost = on_lost
        self.renewals = 0
        self.why = ""  # why the last renewal failed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._keep(), name=f"workflow-lease-{self.run_id}")

    def stop(self) -> None:
        """Renew no more (the run ended or was released; the last write set the lease)."""
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    def expired(self, now: float | None = None) -> bool:
        """Whether the lease written last has run out by this host's clock."""
        return (time.time() if now is None else now) >= self.until

    async def _keep(self) -> None:
        """One renewal per ``lease / 3`` for as long as the run is driven here (``stop``
        cancels it); after a failed one, the next try comes no later than the expiry."""
        period = self.lease / 3
        failing = 0
        while True:
            await asyncio.sleep(max(MIN_PAUSE, min(period, self.until - time.time())))
            until = time.time() + self.lease
            try:
                self.store.apply(self.run_id, run={"lease_until": until},
                                 expect={"state": RunState.RUNNING, "owner": self.owner})
            except RunConflict as exc:
                self.why = exc.message
                self._lost(exc)
                return
            except Exception as exc:  # the store failed: the lease holds until self.until
                self.why = f"the store could not renew it: {exc}"
                if self.expired():
                    self._lost(None)
                    return
                if failing % LOG_EVERY == 0:
                    log.warning("workflow run %s: cannot renew its lease (%d in a row; it "
                                "runs out in %.1f s): %s", self.run_id, failing + 1,
                                self.until - time.time(), exc)
                failing += 1
                continue
            self.until, failing = until, 0
            self.renewals += 1

    def taken_over(self, by: str | None) -> LeaseLost:
        """The error for a run another process took over once this lease had run out."""
        return LeaseLost(f"run {self.run_id}: the lease of this process ({self.owner}) ran out"
                         f" at {stamp(self.until)} and {by or 'another process'} took the run "
                         "over; stopped driving it here", state=RunState.RUNNING, owner=by,
                         lease_until=self.until)

    def ran_out(self) -> LeaseLost:
        """The error for a lease that ran out unrenewed (the run may still be ours)."""
        return LeaseLost(f"run {self.run_id}: the lease of this process ({self.owner}) ran out"
                         f" at {stamp(self.until)} ({self.why}); stopped driving it here so "
                         "that another process may take it over", state=RunState.RUNNING,
                         owner=self.owner, lease_until=self.until)

    def _lost(self, conflict: RunConflict | None) -> None:
        self._task = None
        try:
            self.on_lost(conflict)
        except Exception:
            log.exception("workflow run %s: the lease-lost hook failed", self.run_id)


def stamp(epoch: float) -> str:
    """A wall-clock time as ISO 8601 UTC, for messages read on another host."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
