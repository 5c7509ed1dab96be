"""Fixtures for the agents' work modules: a thread-leak guard and shared small data."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agents.work.datasets import load_builtin
from agents.work.preprocess import Prepared, preprocess


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (sinks, servers, workers)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked: {still}"


@pytest.fixture(scope="session")
def cancer() -> Prepared:
    d = load_builtin("breast_cancer")
    return preprocess(d["X"], d["y"], task=d["task"], feature_names=d["feature_names"])


@pytest.fixture(scope="session")
def diabetes() -> Prepared:
    d = load_builtin("diabetes")
    return preprocess(d["X"], d["y"], task=d["task"], feature_names=d["feature_names"])
