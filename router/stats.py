"""Router counters kept as plain ints on the hot path and exported to Prometheus at scrape.

A prometheus_client Counter takes a lock on every ``inc()``; at tens of thousands of
messages a second that is measurable, so the loop bumps attributes here and a custom
collector (``router.metrics``) reads them when Prometheus asks.
"""

from __future__ import annotations

from collections import Counter


class RouterStats:
    __slots__ = (
        "requests", "replies", "sends", "publishes", "published_messages", "stream_chunks",
        "bytes_in", "errors_sent", "hellos", "drops", "denials", "auth_failures", "malformed",
        "malformed_by",
        "batches_in", "batched_in", "batches_out", "batched_out", "send_refusals",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.replies = 0
        self.sends = 0
        self.publishes = 0
        self.published_messages = 0
        self.stream_chunks = 0
        self.bytes_in = 0
        self.errors_sent = 0
        self.hellos = 0
        self.drops: Counter[str] = Counter()
        self.denials: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.malformed = 0
        self.malformed_by: Counter[str] = Counter()  # the same, by reason
        self.batches_in = 0  # BATCH messages received, and the messages they carried
        self.batched_in = 0
        self.batches_out = 0  # BATCH messages sent, and the messages they carried
        self.batched_out = 0
        # sealed fire-and-forgets an instance refused (not sealed for its key), told their sender
        self.send_refusals = 0

    def drop(self, reason: str, n: int = 1) -> None:
        """Count a message the router could not deliver, by reason."""
        self.drops[reason] += n

    def refuse(self, reason: str) -> None:
        """Count a message refused as malformed, by reason."""
        self.malformed += 1
        self.malformed_by[reason] += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "replies": self.replies,
            "sends": self.sends,
            "publishes": self.publishes,
            "published_messages": self.published_messages,
            "stream_chunks": self.stream_chunks,
            "errors_sent": self.errors_sent,
            "send_refusals": self.send_refusals,
            "hellos": self.hellos,
            "malformed": self.malformed,
            "malformed_by": dict(self.malformed_by),
            "batches": {"in": self.batches_in, "messages_in": self.batched_in,
                        "out": self.batches_out, "messages_out": self.batched_out},
            "drops": dict(self.drops),
            "denials": dict(self.denials),
            "auth_failures": dict(self.auth_failures),
        }
