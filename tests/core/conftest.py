"""Fixtures the core tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Insecure routers in threads: no session-wide AGP_IDENTITY (the scenario tests' mesh
    sets one) for the clients and agents of this test."""
    monkeypatch.delenv("AGP_IDENTITY", raising=False)
