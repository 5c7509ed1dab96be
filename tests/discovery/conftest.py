"""Fixtures for the discovery tests: fresh CURVE keys, record factories, a thread-leak guard."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from discovery.records import Registration


def new_key() -> str:
    """A real Curve25519 public key in Z85, as the mesh uses."""
    public, _secret = zmq.curve_keypair()
    return public.decode("ascii")


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def other_key() -> str:
    return new_key()


@pytest.fixture
def make_reg(key: str) -> Callable[..., Registration]:
    """Build a valid registration; keyword arguments override fields."""

    def make(**overrides: Any) -> Registration:
        fields: dict[str, Any] = {
            "name": "acme/ml/trainer", "instance": "i1", "public_key": key,
            "endpoints": ("tcp://127.0.0.1:7000",), "capabilities": ("train",),
            "version": "1.0.0", "capacity": 4, "weight": 1, "labels": {"zone": "a"},
        }
        fields.update(overrides)
        return Registration(**fields).validated()

    return make


@pytest.fixture
def mesh_id() -> str:
    """A mesh name no other test (or test run on this host) announces in."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves zeroconf (or any) threads running, as python-zeroconf's do."""
    before = frozenset(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked: set[threading.Thread] = set()
    while time.monotonic() < deadline:
        leaked = {t for t in threading.enumerate() if t not in before and t.is_alive()}
        if not leaked:
            break
        next(iter(leaked)).join(timeout=0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
