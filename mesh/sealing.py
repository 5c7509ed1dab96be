"""End-to-end sealing of a client's requests and sends: whether the client seals, which
destinations never are, and the header and payload a sealed message carries.

A mixin of :class:`mesh.aio.AsyncMesh`, off the plain path: a client that does not seal
never calls it. Kept in one place because ``request``, ``request_nowait`` and ``send`` must
seal alike (the same AAD binding action and id, the same Envelope with the sender's key), and
the scheme changes for all three at once.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any

from mesh.errors import ConfigError
from mesh.session import Security
from mesh.wire import with_nonce
from proto import agp_pb2

# where keys are found and the router's own service: they carry what is public anyway
# (names, keys, stats), and the registry, holding every key, is not registered in itself
NEVER_SEALED = frozenset({"agp/system/registry", "agp/router", "agp/system/auth"})


def payload_boxes(security: Security | None, e2e: bool | None) -> Any:
    """The client's ``security.payload.PayloadBoxes`` when it seals end to end (``e2e``,
    else ``AGP_E2E``), else None; ConfigError when it would seal with no identity."""
    if e2e is None:
        e2e = os.environ.get("AGP_E2E", "") not in ("", "0")
    if not e2e:
        return None
    if security is None:
        raise ConfigError("end-to-end sealing needs an identity (a secure mesh)")
    from security.keys import KeyPair
    from security.payload import PayloadBoxes

    return PayloadBoxes(KeyPair(security.public, security.secret))


class Sealing:
    """``_seal`` and the registry lookup of the keys it seals for, for ``AsyncMesh``."""

    # provided by AsyncMesh
    e2e: Any  # security.payload.PayloadBoxes, or None: not sealing
    _sealed_headers: dict[str, bytes]  # action -> Envelope(action, sender_key)
    request: Any

    def _sealed_header(self, action: str, idempotency_key: str | None,
                       traceparent: str | None) -> bytes:
        """The Envelope of a sealed request but its nonce (see ``wire.with_nonce``)."""
        assert self.e2e is not None
        if idempotency_key is None and traceparent is None:
            h = self._sealed_headers.get(action)
            if h is None:
                h = agp_pb2.Envelope(action=action, sender_key=self.e2e.public
                                     ).SerializeToString()
                if len(self._sealed_headers) < 1024:
                    self._sealed_headers[action] = h
            return h
        return agp_pb2.Envelope(action=action, idempotency_key=idempotency_key or "",
                                traceparent=traceparent or "",
                                sender_key=self.e2e.public).SerializeToString()

    def _seal(self, recipients: list[bytes], action: str, ident: int, payload: list[Any],
              idempotency_key: str | None = None, traceparent: str | None = None
              ) -> tuple[bytes, list[Any], Any]:
        """``(header, sealed payload, reply key)`` of message ``ident`` for whichever of
        ``recipients`` opens it, bound to its action and id."""
        assert self.e2e is not None
        aad = action.encode() + b"\0" + ident.to_bytes(8, "little")
        blob, sealed, reply_key = self.e2e.seal(recipients, payload, aad)
        header = with_nonce(self._sealed_header(action, idempotency_key, traceparent), blob)
        return header, sealed, reply_key

    def _registry_lookup(self, name: str) -> Coroutine[Any, Any, Any]:
        """The registry's entry for ``name``: the keys its instances are sealed for."""
        return self.request("agp/system/registry", "lookup", {"name": name}, timeout=5.0)
