"""A call retried with the same idempotency key is answered from the first answer, not run
twice; the answers an agent keeps for that are bounded in count and in bytes."""

from __future__ import annotations

from typing import Any

import pytest

from agents import calls
from agents.echo import Echo
from mesh import Mesh

SVC = "test/ns/echo"


def test_a_retried_call_is_answered_once_from_the_first_answer(router, start_echo) -> None:
    start_echo()
    with Mesh.connect(router.ready_info["router"]) as m:
        for _ in range(3):  # as a workflow step retried after a lost reply would
            assert m.request(SVC, "record", "deploy v2", idempotency_key="run-1/deploy") is None
        m.request(SVC, "record", "deploy v3", idempotency_key="run-2/deploy")
        assert m.request(SVC, "recorded_items", None) == ["deploy v2", "deploy v3"]


def _answers(agent: Echo) -> dict[str, Any]:
    return {k: bytes(v[2]) for k, v in agent._idem.items()}


def test_kept_answers_stay_within_their_byte_budget_oldest_out_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "IDEMPOTENCY_CACHE_BYTES", 100)
    agent = Echo(endpoint="tcp://127.0.0.1:1", namespace="test/ns")
    for i in range(4):
        agent._remember_answer(f"k{i}", 0, [bytes([i]) * 40])
    assert _answers(agent) == {"k2": b"\x02" * 40, "k3": b"\x03" * 40}  # 80 of 100 bytes
    assert agent._idem_bytes == 80
    agent._remember_answer("big", 0, [b"x" * 101])  # more than the whole budget: not kept
    assert "big" not in agent._idem
    agent._remember_answer("k3", 0, [b"y" * 10])  # the same key again: replaced, recounted
    assert agent._idem_bytes == 50
