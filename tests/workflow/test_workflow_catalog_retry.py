"""A workflow's agent names are checked against the router's catalog before the run starts,
and a name the router does not serve yet is looked up again before the spec is refused: an
agent that is restarting (the router forgot its service with its last instance) is back
within seconds and must not fail the run.

A real router runs in a thread of this process; the agent joins it on the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agents import orchestrator
from agents.base import Agent, action
from mesh.aio import AsyncMesh
from mesh.workflow.validate import WorkflowSpecError
from router.server import Router
from tests.helpers import router_in_thread
from tests.workflow._helpers import run_async, until

SPEC = {"name": "late", "steps": {"a": {"agent": "test/late/late", "action": "go"}}}


class Late(Agent):
    name = "late"
    namespace = "test/late"
    register_with_registry = False

    @action()
    async def go(self, data: Any, ctx: Any) -> Any:
        return data


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any] | None]:
    """Every catalog the check was given (the real router's answers), in order."""
    seen: list[dict[str, Any] | None] = []
    real = orchestrator.mesh_catalog

    async def counted(mesh: AsyncMesh) -> dict[str, Any] | None:
        catalog = await real(mesh)
        seen.append(catalog)
        return catalog

    monkeypatch.setattr(orchestrator, "mesh_catalog", counted)
    monkeypatch.setattr(orchestrator, "CATALOG_WAIT", 0.2)
    return seen


def test_an_agent_that_joins_between_lookups_is_accepted(router: Router,
                                                          lookups: list[Any]) -> None:
    async def main() -> Any:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        agent = Late(endpoint=router.endpoint)
        try:
            check = asyncio.ensure_future(orchestrator.checked_names(SPEC, m))
            await until(lambda: len(lookups) >= 1, timeout=10, what="the first lookup")
            assert "test/late/late" not in (lookups[0] or {})
            await agent.start()  # joins before the next lookup (0.2 s later)
            return await check
        finally:
            await m.close()
            agent.stop()
            await agent._shutdown(1)

    spec = run_async(main())
    assert set(spec.steps) == {"a"}
    assert len(lookups) >= 2
    assert "test/late/late" in (lookups[-1] or {})


def test_a_name_no_agent_serves_is_refused_after_every_lookup(router: Router,
                                                              lookups: list[Any]) -> None:
    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            with pytest.raises(WorkflowSpecError, match="unknown agent 'test/late/late'"):
                await orchestrator.checked_names(SPEC, m)
        finally:
            await m.close()

    run_async(main())
    assert len(lookups) == orchestrator.CATALOG_TRIES
    assert all(c is not None and "test/late/late" not in c for c in lookups)
