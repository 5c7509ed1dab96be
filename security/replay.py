"""Anti-replay sliding window over 64-bit message counters (as IPsec's, RFC 4303 s3.4.3).

The window remembers the highest counter seen and a bitmap of the ``size`` counters below it.
A counter is refused when it was seen already or when it is so old that it fell out of the
window (we can no longer tell, so we refuse). Callers check before decrypting and commit
only after the message authenticated: a forged counter must not move the window.
"""

from __future__ import annotations

from typing import Final

from mesh.errors import Malformed, Replayed

__all__ = ["DEFAULT_WINDOW", "MAX_COUNTER", "ReplayWindow"]

DEFAULT_WINDOW: Final = 4096
MAX_COUNTER: Final = 2**64 - 1


class ReplayWindow:
    """``check`` then ``commit``; not thread-safe (one per session, one owner)."""

    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self.size = size
        self.top = -1  # highest committed counter
        self._bits = 0  # bit i set: counter top - i was seen
        self._mask = (1 << size) - 1

    def check(self, counter: int, count: int = 1) -> None:
        """Raise :class:`Replayed` unless counters ``counter .. counter+count-1`` are all new."""
        if counter < 0 or count < 1 or counter + count - 1 > MAX_COUNTER:
            raise Malformed("counter out of range")
        top = self.top
        if counter > top:
            return  # the usual case: newer than anything seen
        bits = self._bits
        for c in range(counter, counter + count):
            if c > top:
                return  # this and every later counter in the run are above the window
            diff = top - c
            if diff >= self.size:
                raise Replayed("message older than the replay window")
            if (bits >> diff) & 1:
                raise Replayed("duplicate message")

    def commit(self, counter: int, count: int = 1) -> None:
        """Mark counters as seen (after the message authenticated)."""
        size, top = self.size, self.top
        last = counter + count - 1
        if counter > top:  # the usual case: the whole run is new, one shift
            shift, run = last - top, (1 << count) - 1
            bits = (self._bits << shift) | run if shift < size else run & self._mask
            # bits above the window are never read: trim them now and then, not each time
            self._bits = bits & self._mask if bits.bit_length() > 2 * size else bits
            self.top = last
            return
        for c in range(counter, last + 1):
            top = self.top
            if c > top:
                shift = c - top
                self._bits = ((self._bits << shift) | 1) & self._mask if shift < size else 1
                self.top = c
            elif top - c < size:
                self._bits |= 1 << (top - c)

    @classmethod
    def resumed(cls, top: int, size: int = DEFAULT_WINDOW) -> ReplayWindow:
        """A window for a session forgotten (for space) at ``top``: every counter up to
        ``top`` reads as seen, so its old messages are refused and its new ones taken."""
        w = cls(size)
        w.top = top
        w._bits = w._mask if top >= 0 else 0
        return w

    def check_and_commit(self, counter: int, count: int = 1) -> None:
        self.check(counter, count)
        self.commit(counter, count)
