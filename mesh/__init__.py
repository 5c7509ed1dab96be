"""agp-mesh: the embeddable client.

    from mesh import Mesh
    with Mesh.connect() as m:                      # AGP_ROUTER or tcp://127.0.0.1:7700
        m.request("acme/ml/ml_trainer", "train", {"dataset": "iris"})

``AsyncMesh`` is the same client for asyncio code. Every error derives from ``mesh.Error``.
"""

from mesh.aio import AsyncMesh
from mesh.backoff import Backoff
from mesh.breaker import CircuitBreaker
from mesh.errors import (
    Cancelled,
    CircuitOpen,
    Closed,
    ConfigError,
    DeadlineExceeded,
    Draining,
    Error,
    ErrorCode,
    Forbidden,
    HandlerError,
    Malformed,
    NoSuchAction,
    NoSuchService,
    NotARecipient,
    Overloaded,
    Replayed,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from mesh.pubsub import Message, Subscription
from mesh.sync import Mesh

__all__ = [
    # clients
    "AsyncMesh",
    "Mesh",
    "Message",
    "Subscription",
    # reliability
    "Backoff",
    "CircuitBreaker",
    # errors
    "Cancelled",
    "CircuitOpen",
    "Closed",
    "ConfigError",
    "DeadlineExceeded",
    "Draining",
    "Error",
    "ErrorCode",
    "Forbidden",
    "HandlerError",
    "Malformed",
    "NoSuchAction",
    "NoSuchService",
    "NotARecipient",
    "Overloaded",
    "Replayed",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
]
