"""Name and topic patterns for RBAC, and the set algebra behind prefix subscriptions.

Names are ``/``-separated (``acme/ml/trainer/3``), topics ``.``-separated (``stocks.AAPL``).
A pattern is a list of segments where

* a literal segment matches itself only (``AA*`` is not a wildcard: it is refused);
* ``*`` matches exactly one segment;
* a final ``**`` or ``>`` (synonyms) matches ONE or more remaining segments, as NATS's ``>``:
  ``stocks.>`` matches ``stocks.AAPL`` and ``stocks.AAPL.bid`` but not ``stocks``.

A segment is non-empty, is not ``.`` or ``..``, and holds no separator, ``*``, ``>``,
whitespace or control character. Names and topics are at most 255 bytes and 16 segments.

ZeroMQ subscriptions are raw byte prefixes, not patterns, so :meth:`Pattern.covers_prefix`
and :meth:`Pattern.intersects_prefix` reason about the set S(P) of every valid topic that
starts with a prefix P = ``f1.f2. ... .partial``: the topics whose first segments are
f1, f2, ..., whose next segment starts with ``partial``, followed by any further segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from mesh.errors import ConfigError, Malformed

__all__ = ["NAME_SEP", "TOPIC_SEP", "Pattern", "parse_pattern", "split_name", "split_prefix"]

NAME_SEP: Final = "/"
TOPIC_SEP: Final = "."
ONE: Final = "*"
REST: Final = frozenset({"**", ">"})
MAX_LEN: Final = 255
MAX_SEGMENTS: Final = 16
_BAD_CHARS: Final = re.compile(r"[\x00-\x20\x7f*>]")
_DOTS: Final = frozenset({".", ".."})  # never path-like segments in names


def _valid_segment(seg: str, sep: str) -> bool:
    return (bool(seg) and sep not in seg and seg not in _DOTS
            and not _BAD_CHARS.search(seg))


def split_name(text: str, sep: str) -> tuple[str, ...]:
    """Segments of a concrete name or topic; :class:`Malformed` if it is not one."""
    if not isinstance(text, str) or not text or len(text.encode("utf-8", "replace")) > MAX_LEN:
        raise Malformed("name must be 1 to 255 bytes")
    segs = tuple(text.split(sep))
    if len(segs) > MAX_SEGMENTS or not all(_valid_segment(s, sep) for s in segs):
        raise Malformed(f"malformed name {text[:80]!r}")
    return segs


def split_prefix(prefix: str) -> tuple[tuple[str, ...], str]:
    """A topic prefix as (complete segments, partial last segment); Malformed if no valid
    topic could start with it (then it matches nothing a publisher may send)."""
    if len(prefix.encode("utf-8", "replace")) > MAX_LEN:
        raise Malformed("prefix longer than 255 bytes")
    *fixed, partial = prefix.split(TOPIC_SEP)
    if len(fixed) >= MAX_SEGMENTS or not all(_valid_segment(s, TOPIC_SEP) for s in fixed):
        raise Malformed(f"malformed topic prefix {prefix[:80]!r}")
    if partial and not _valid_segment(partial, TOPIC_SEP):
        raise Malformed(f"malformed topic prefix {prefix[:80]!r}")
    return tuple(fixed), partial


@dataclass(frozen=True)
class Pattern:
    text: str
    segments: tuple[str, ...]  # literal or "*"; the trailing rest marker is not included
    rest: bool  # ends with ** / >

    def matches(self, segs: tuple[str, ...]) -> bool:
        n = len(self.segments)
        if (len(segs) <= n) if self.rest else (len(segs) != n):
            return False
        return all(p == ONE or p == s for p, s in zip(self.segments, segs, strict=False))

    def covers_prefix(self, fixed: tuple[str, ...], partial: str) -> bool:
        """True if this pattern matches EVERY topic in S(fixed + partial).

        S holds topics of every length >= len(fixed) + 1, so only a pattern ending in ``>``
        can cover it, and that ``>`` must start at or before the partial segment, whose
        content varies; each segment before it must match the fixed ones.
        """
        if not self.rest or len(self.segments) > len(fixed):
            return False
        return all(p == ONE or p == f for p, f in zip(self.segments, fixed, strict=False))

    def intersects_prefix(self, fixed: tuple[str, ...], partial: str) -> bool:
        """True if this pattern matches SOME topic in S(fixed + partial)."""
        k = len(fixed)
        for i, p in enumerate(self.segments):
            if i < k:
                if p != ONE and p != fixed[i]:
                    return False
            elif i == k and p != ONE and not p.startswith(partial):
                return False
        # past the pattern's literal part: topics in S may be as long as needed
        return self.rest or len(self.segments) >= k + 1


def parse_pattern(text: str, sep: str) -> Pattern:
    """Compile one pattern for separator ``sep``; :class:`ConfigError` says what is wrong."""
    if not isinstance(text, str) or not text or len(text.encode()) > MAX_LEN:
        raise ConfigError(f"pattern must be a non-empty string of at most {MAX_LEN} bytes")
    segs = text.split(sep)
    rest = segs[-1] in REST
    if rest:
        segs = segs[:-1]
    if len(segs) >= MAX_SEGMENTS:
        raise ConfigError(f"pattern {text!r} has too many segments")
    for s in segs:
        if s in REST:
            raise ConfigError(f"pattern {text!r}: '{s}' may only end a pattern")
        if s != ONE and not _valid_segment(s, sep):
            raise ConfigError(f"pattern {text!r}: bad segment {s!r} (separator is {sep!r}; "
                              "wildcards are whole segments)")
    return Pattern(text, tuple(segs), rest)
