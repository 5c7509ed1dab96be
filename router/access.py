"""The seam between the router and the security layer.

The router asks three things: is this HELLO acceptable from this authenticated connection
(returning a session), may this session do ACTION on NAME, and which identities were
revoked since the last look. ``OpenAccess`` is the explicit insecure development mode; the
secure implementation lives in ``security.access``. The identity always comes from the
connection (the CURVE key the ZAP handler authenticated), never from a field the peer wrote.
"""

from __future__ import annotations

from typing import Any, Protocol

ACTIONS = ("request", "send", "publish", "subscribe", "stream", "register", "admin")


class Access(Protocol):
    secure: bool

    def hello(self, identity: str | None, token: str, peer_name: str) -> Any:
        """Return a session object, or raise mesh.errors.Unauthenticated."""

    def allowed(self, session: Any, action: str, name: bytes) -> bool:
        """True when the session may do ``action`` on ``name`` (cached by the implementation)."""

    def may(self, session: Any, action: str, name: bytes) -> bool:
        """``allowed`` for a listing: no log, no reload, nothing cached or counted."""

    def allowed_prefix(self, identity: str | None, prefix: bytes) -> bool:
        """True when the identity may subscribe to every topic under ``prefix``."""

    def expired(self, session: Any, now: float) -> bool:
        """True when the session's credentials no longer hold (expired or revoked token)."""

    def refresh(self) -> None:
        """Reload trust store and policy when their files changed."""


class OpenAccess:
    """Everything allowed: the ``--insecure`` development mode."""

    secure = False

    def hello(self, identity: str | None, token: str, peer_name: str) -> Any:
        return None

    def allowed(self, session: Any, action: str, name: bytes) -> bool:
        return True

    def may(self, session: Any, action: str, name: bytes) -> bool:
        return True

    def allowed_prefix(self, identity: str | None, prefix: bytes) -> bool:
        return True

    def expired(self, session: Any, now: float) -> bool:
        return False

    def refresh(self) -> None:
        return None
