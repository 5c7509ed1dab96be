"""Which process a pid names: its kernel start time, so a reused pid is told apart.

Used where a process is recorded to be found again later (``agp down`` stopping what the
supervisor started; a workflow run's owner): a pid alone may name another process by then.
"""

from __future__ import annotations


def proc_starttime(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone (or
    a zombie, or no /proc). With the pid it identifies one process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name in parentheses may hold spaces
    if fields and fields[0] == "Z":
        return None  # a zombie has exited; only its parent's wait() is missing
    try:
        return int(fields[19])  # field 22 of proc(5)
    except (IndexError, ValueError):
        return None
