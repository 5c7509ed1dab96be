"""Who drives a run: owner ids, whether the process behind one is still alive, and leases.

An owner id is ``host:pid:nonce``. The nonce is fresh in every process (the process's start
time in clock ticks, when /proc gives it, and random bits), so a process that got the pid
of a dead owner back (a container restart gives the new orchestrator the same pid 1, and
pids are reused) is recognised as a different, later process: the run's owner is dead.

Liveness is only knowable on this host. For an owner on another host the store holds a
lease: the owner writes ``lease_until`` (epoch seconds) when it takes the run and renews it
every ``lease / 3`` while it drives it (:mod:`mesh.workflow.lease`). Another host may take
the run over (by the same compare-and-swap as any takeover) once ``lease_until`` plus a
grace for clock skew has passed; before that the resume is refused with :class:`LeaseHeld`.
A run with no lease on another host (written by a build before leases) is assumed alive and
resumed only by hand (``resume(..., force=True)``) once its host is known gone.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Final

from mesh.process_identity import proc_starttime

LEASE_SECONDS: Final = 20.0
"""How long a lease lasts unless renewed. With :data:`LEASE_GRACE`, another host takes over
a run whose owner died within 25 s, inside the mesh's 30 s recovery target."""
LEASE_GRACE: Final = 5.0
"""Added to a lease before another host may take the run over: the clocks of two hosts may
differ by this much (NTP keeps them far closer) without a run being driven twice."""
_LEGACY_PARTS: Final = 2  # ``host:pid`` ids written before nonces existed
_owner: tuple[int, str] | None = None  # (pid, id): recomputed in a forked child


def process_owner() -> str:
    """This process's owner id, ``host:pid:nonce`` (the same for all its runners)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        start = _start_ticks(pid)
        nonce = secrets.token_hex(4)
        _owner = (pid, f"{socket.gethostname()}:{pid}:{f'{start}-' if start else ''}{nonce}")
    return _owner[1]


def owner_alive(owner: str | None) -> bool:
    """Whether the process that owns a run may still be driving it.

    False for no owner or one without a ``host:pid`` (as before nonces: not a process),
    for this process's pid under another nonce (an earlier incarnation), for a pid that is
    gone, and for a live pid whose start time differs from the one in the id (reused).
    True for this process, for another host's owner (not knowable from here: its lease
    tells, see :func:`owner_gone`), and for a pid part that is not a number.
    """
    if not owner or ":" not in owner:
        return False
    parsed = _parse(owner)
    if parsed is None or parsed[0] != socket.gethostname():
        return True
    _, pid, nonce = parsed
    if pid == os.getpid():
        return owner == process_owner()  # a legacy id or another nonce: an earlier process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started, _, _ = (nonce or "").rpartition("-")
    now = _start_ticks(pid)
    return not (started and now and started != now)


def owner_here(owner: str | None) -> bool:
    """Whether ``owner`` is a process id (``host:pid[:nonce]``) of this host, so that
    :func:`owner_alive` can tell for sure; another host's owner is judged by its lease."""
    parsed = _parse(owner) if owner else None
    return parsed is not None and parsed[0] == socket.gethostname()


def takeover_at(lease_until: float | None, *, grace: float = LEASE_GRACE) -> float | None:
    """When another host may take over a run leased until ``lease_until`` (None: never
    without force, as the run holds no lease)."""
    return None if lease_until is None else lease_until + grace


def owner_gone(owner: str | None, lease_until: float | None, *, grace: float = LEASE_GRACE,
               now: float | None = None) -> bool:
    """Whether a ``running`` run may be taken over without force.

    Yes for no owner and a dead process on this host; no for a live one on this host (its
    lease does not matter: liveness is known); for any other owner (another host's, or a
    name that is no process id), yes once its lease plus ``grace`` has passed, and no while
    it holds one or when it holds none.
    """
    if not owner:
        return True
    if owner_here(owner):  # a process of this host: its liveness is known
        return not owner_alive(owner)
    # another host's, or an id that names no process (a runner given its own name): only
    # its lease tells
    at = takeover_at(lease_until, grace=grace)
    return at is not None and (time.time() if now is None else now) > at


def _parse(owner: str) -> tuple[str, int, str | None] | None:
    """``(host, pid, nonce)`` of a process owner id; None when it names no process."""
    parts = owner.rsplit(":", 2)
    if len(parts) == 3 and parts[2].isdigit() and not parts[1].isdigit():
        parts = owner.rsplit(":", 1)  # ``host:pid`` with a colon in the host part
    if len(parts) < _LEGACY_PARTS or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None


def _start_ticks(pid: int) -> str | None:
    start = proc_starttime(pid)
    return None if start is None else str(start)
