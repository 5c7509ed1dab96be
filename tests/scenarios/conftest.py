"""One local mesh for the scenario tests: router and the four work agents, real processes.

Starting sklearn-importing processes costs seconds each, so the mesh is shared by the
module's tests (tests that kill a process start their own, under another service name).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.local_mesh import LocalMesh
from agents.procs import ManagedProcess
from mesh import Mesh

NAMESPACE = "test/scn"


@pytest.fixture(scope="session")
def local_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    os.environ.setdefault("AGP_MDNS", "0")
    lm = LocalMesh(tmp_path_factory.mktemp("scenario-mesh"), namespace=NAMESPACE,
                   registry=False)
    lm.start()
    yield lm
    lm.stop()
    leaked = [p.name for p in lm.agents if p.alive()]
    assert not leaked, f"processes still alive: {leaked}"


@pytest.fixture
def endpoint(local_mesh: LocalMesh) -> str:
    return local_mesh.endpoint


@pytest.fixture
def client(endpoint: str) -> Iterator[Mesh]:
    with Mesh.connect(endpoint) as m:
        yield m


@pytest.fixture
def extra_agents(local_mesh: LocalMesh) -> Iterator[list[ManagedProcess]]:
    """Processes a test adds to the shared mesh; stopped when the test ends."""
    started: list[ManagedProcess] = []
    yield started
    for p in started:
        p.stop()
    assert not [p.name for p in started if p.alive()]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"
