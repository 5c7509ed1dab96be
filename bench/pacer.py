"""A periodic Linux timerfd that wakes an asyncio loop on schedule, for open-loop clients.

An open-loop client must send request i at t0 + i/rate. The loop's own timers tick in
milliseconds (libuv's, and epoll's timeout in asyncio), so at 5,000/s they would send in
bursts up to a millisecond late, and the coordinated-omission correction would rightly
charge that lateness to the mesh. A thread that sleeps precisely and wakes the loop needs
the GIL to do it, which a busy loop holds for up to the switch interval (5 ms). A timerfd
needs neither: the kernel makes its file descriptor readable at each period, and the loop,
watching it with ``add_reader``, wakes then.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from typing import Final

_CLOCK_MONOTONIC: Final = 1  # what time.perf_counter_ns reads on Linux
_TFD_NONBLOCK: Final = 0o4000
_TFD_CLOEXEC: Final = 0o2000000
_TFD_TIMER_ABSTIME: Final = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(ns: int) -> _Timespec:
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


class Pacer:
    """Call ``tick()`` on ``loop`` every ``interval_ns`` from ``start_ns`` (perf_counter_ns
    time) until closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start_ns: int, interval_ns: int,
                 tick: Callable[[], None]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        spec = _Itimerspec(_timespec(max(1, interval_ns)), _timespec(max(1, start_ns)))
        if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._fd, self._loop, self._tick = fd, loop, tick
        loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            os.read(self._fd, 8)  # the number of expirations: one wake-up covers them all
        except BlockingIOError:
            return
        self._tick()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
