"""Who drives a run: owner ids, and whether the process behind one is still alive.

An owner id is ``host:pid:nonce``. The nonce is fresh in every process (the process's start
time in clock ticks, when /proc gives it, and random bits), so a process that got the pid
of a dead owner back (a container restart gives the new orchestrator the same pid 1, and
pids are reused) is recognised as a different, later process: the run's owner is dead.

Liveness is only knowable on this host. An owner on another host is assumed alive, so a
run is never driven twice; such a run is resumed by hand (``resume(..., force=True)``)
once its host is known gone. The full answer, not built yet, is a lease: the owner renews
a heartbeat column while it drives, and another host may take over (by the same
compare-and-swap) a run whose lease has expired.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Final

from mesh.process_identity import proc_starttime

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
    True for this process, for another host's owner (not knowable from here: never drive
    a run twice), and for a pid part that is not a number.
    """
    if not owner or ":" not in owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) == 3 and parts[2].isdigit() and not parts[1].isdigit():
        parts = owner.rsplit(":", 1)  # ``host:pid`` with a colon in the host part
    if len(parts) < _LEGACY_PARTS or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    nonce = parts[2] if len(parts) == 3 else None
    if host != socket.gethostname():
        return True
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


def _start_ticks(pid: int) -> str | None:
    start = proc_starttime(pid)
    return None if start is None else str(start)
