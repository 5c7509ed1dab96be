"""Validation: every kind of problem, each with its message, all reported at once."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from mesh.workflow import (
    StepSpec,
    WorkflowSpec,
    WorkflowSpecError,
    load_spec,
    open_store,
    validate,
)


def problems_of(spec: Any, **kw: Any) -> list[str]:
    with pytest.raises(WorkflowSpecError) as info:
        validate(spec, **kw)
    return info.value.problems


def test_cycle_names_its_path() -> None:
    problems = problems_of({
        "a": {"agent": "x", "depends_on": ["c"]},
        "b": {"agent": "x", "depends_on": ["a"]},
        "c": {"agent": "x", "depends_on": ["b"]},
        "d": {"agent": "x"},
    })
    assert problems == ["dependency cycle: a -> c -> b -> a"]


def test_two_separate_cycles_are_both_reported() -> None:
    problems = problems_of({
        "a": {"agent": "x", "depends_on": ["b"]}, "b": {"agent": "x", "depends_on": ["a"]},
        "p": {"agent": "x", "depends_on": ["q"]}, "q": {"agent": "x", "depends_on": ["p"]},
    })
    assert sorted(problems) == ["dependency cycle: a -> b -> a", "dependency cycle: p -> q -> p"]


def test_unknown_dependency_with_a_hint() -> None:
    assert problems_of({
        "training": {"agent": "ml_trainer", "depends_on": ["preprocesing"]},
        "preprocessing": {"agent": "data_analyst"},
    }) == ["step 'training' depends on unknown step 'preprocesing' "
           "(did you mean 'preprocessing'?)"]


def test_self_dependency() -> None:
    assert problems_of({"a": {"agent": "x", "depends_on": ["a"]}}) == [
        "step 'a' depends on itself"]


def test_empty_workflow() -> None:
    assert problems_of({}) == ["the workflow is empty: it needs at least one step"]
    assert problems_of({"name": "x", "steps": {}}) == [
        "the workflow is empty: it needs at least one step"]


def test_not_a_mapping() -> None:
    assert problems_of(["a"]) == ["a workflow must be a table/object of steps, got list ['a']"]


@pytest.mark.parametrize(("body", "message"), [
    ({"agent": "x", "timeout": 0}, "step 's': timeout must be a positive number of seconds, got 0"),
    ({"agent": "x", "timeout": "5m"},
     "step 's': timeout must be a positive number of seconds, got '5m'"),
    ({"agent": "x", "timeout": float("inf")},
     "step 's': timeout must be a positive number of seconds, got inf"),
    ({"agent": "x", "retries": -1}, "step 's': retries must be a non-negative integer, got -1"),
    ({"agent": "x", "retries": 1.5}, "step 's': retries must be a non-negative integer, got 1.5"),
    ({"agent": "x", "retries": True}, "step 's': retries must be a non-negative integer, got True"),
    ({"agent": "x", "depends_on": "a"},
     "step 's': depends_on must be a list of step names, got 'a'"),
    ({"agent": "x", "depends_on": [1]},
     "step 's': depends_on must be a list of step names, got [1]"),
    ({"agent": "x", "backoff": -1},
     "step 's': backoff must be a non-negative number of seconds, got -1"),
    ({"agent": "x", "params": [1]},
     "step 's': params must be a table/object with string keys, got [1]"),
    ({"agent": "x", "tiemout": 3}, "step 's': unknown key 'tiemout' (did you mean 'timeout'?)"),
    ({"agent": "x", "action": ""}, "step 's': action must be a non-empty name, got ''"),
    ({}, "step 's': missing required key 'agent'"),
    ({"agent": "a//b"}, "step 's': agent must be a service name like 'data_analyst' or "
                        "'acme/ml/data_analyst', got 'a//b'"),
    ({"agent": 7}, "step 's': agent must be a service name like 'data_analyst' or "
                   "'acme/ml/data_analyst', got 7"),
    ("data_analyst", "step 's': must be a table/object with an 'agent', got str 'data_analyst'"),
])
def test_wrong_types_each_have_a_clear_message(body: Any, message: str) -> None:
    assert problems_of({"s": body}) == [message]


def test_bad_step_names_and_wrapper_keys() -> None:
    problems = problems_of({"name": "", "steps": {"has space": {"agent": "x"}}, "stepz": 1})
    assert "unknown top-level key 'stepz' (did you mean 'steps'?)" in problems
    assert "workflow name must be a non-empty string, got str ''" in problems
    assert any(p.startswith("step name 'has space' is invalid") for p in problems)


def test_all_problems_are_collected_in_one_error() -> None:
    problems = problems_of({
        "a": {"agent": "x", "depends_on": ["b"]},
        "b": {"agent": "y", "depends_on": ["c"]},
        "c": {"agent": "y", "depends_on": ["a", "c", "zz"], "tiemout": 3},
        "d": {"agent": "q", "retries": -1},
    })
    assert problems == [
        "step 'c': unknown key 'tiemout' (did you mean 'timeout'?)",
        "step 'd': retries must be a non-negative integer, got -1",
        "step 'c' depends on itself",
        "step 'c' depends on unknown step 'zz'",
        "dependency cycle: a -> b -> c -> a",
    ]


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(WorkflowSpecError) as info:
        validate({"a": {"agent": "x", "retries": -1, "timeout": -2}}, source="f.toml")
    text = str(info.value)
    assert "invalid workflow spec in f.toml: 2 problem(s)" in text
    assert "timeout must be a positive number" in text
    assert "retries must be" in text


CATALOG = {"acme/ml/data_analyst": {"collect", "clean"}, "ml_trainer": {"train"},
           "notification": None}


def test_catalog_catches_unknown_agents_and_actions() -> None:
    problems = problems_of({
        "collect": {"agent": "data_analyst"},
        "clean": {"agent": "data_analyst", "action": "scrub"},
        "train": {"agent": "ml_trainer"},
        "deploy": {"agent": "inference_service"},
        "alert": {"agent": "notification", "action": "anything"},
    }, catalog=CATALOG)
    assert problems == [
        "step 'clean': agent 'data_analyst' has no action 'scrub' (actions: clean, collect)",
        "step 'deploy': unknown agent 'inference_service' "
        "(known agents: acme/ml/data_analyst, ml_trainer, notification)",
    ]


def test_valid_spec_with_catalog_passes() -> None:
    spec = validate({"collect": {"agent": "acme/ml/data_analyst"},
                     "train": {"agent": "ml_trainer", "depends_on": ["collect"]}},
                    catalog=CATALOG)
    assert spec.order == ("collect", "train")


def test_params_that_json_cannot_carry_are_refused_by_name(tmp_path: Path) -> None:
    toml = tmp_path / "collect.toml"
    toml.write_text('[collect]\nagent = "data_analyst"\n'
                    'params = {since = 2024-01-01, grid = [1, {at = 12:30:00}]}\n')
    with pytest.raises(WorkflowSpecError) as info:
        load_spec(toml)
    assert info.value.problems == [
        "step 'collect': params.since must be JSON data (string, number, boolean, array or "
        "table), got date datetime.date(2024, 1, 1) (quote it to pass a string)",
        "step 'collect': params.grid[1].at must be JSON data (string, number, boolean, array "
        "or table), got time datetime.time(12, 30) (quote it to pass a string)",
    ]
    assert problems_of({"a": {"agent": "x", "params": {"raw": b"\x00", "tags": {1, 2},
                                                       "by": {1: "one"}}}}) == [
        "step 'a': params.raw must be JSON data (string, number, boolean, array or table), "
        "got bytes b'\\x00'",
        "step 'a': params.tags must be JSON data (string, number, boolean, array or table), "
        "got set {1, 2}",
        "step 'a': params.by has a non-string key 1",
    ]
    deep: Any = "leaf"
    for _ in range(5000):  # far past the recursion limit: refused, not a RecursionError
        deep = [deep]
    assert problems_of({"a": {"agent": "x", "params": {"deep": deep}}}) == [
        f"step 'a': params.deep{'[0]' * 64} is nested more than 64 levels deep"]
    with open_store(str(tmp_path / "runs.db")) as store:  # and nothing reaches the store
        assert store.list_runs() == []


def test_json_params_of_every_kind_pass_and_round_trip() -> None:
    params = {"n": 1, "x": 0.5, "ok": True, "none": None, "s": "2024-01-01",
              "grid": [1, [2, 3], {"k": "v"}], "nested": {"a": {"b": [None]}}}
    spec = validate({"a": {"agent": "x", "params": params}})
    assert dict(spec.steps["a"].params) == params
    assert validate(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_hand_built_spec_that_json_cannot_carry_is_refused_at_submit(tmp_path: Path) -> None:
    step = StepSpec(name="a", agent="x", action="a", params={"since": datetime.date(2024, 1, 1)})
    spec = WorkflowSpec(name="w", steps={"a": step}, order=("a",))
    with open_store(str(tmp_path / "runs.db")) as store:
        with pytest.raises(WorkflowSpecError, match="cannot be stored as JSON"):
            store.create_run(spec)
        assert store.list_runs() == []


def test_catalog_names_resolve_as_the_router_resolves_them() -> None:
    """An instance name is its service's; a one-segment name is the one service ending so;
    a two-segment suffix is no name the router knows."""
    catalog = {"acme/ml/ml_trainer": ["training"], "acme/ml/data_analyst": None}
    ok = validate({"a": {"agent": "acme/ml/ml_trainer/ml_trainer-0", "action": "training"},
                   "b": {"agent": "ml_trainer", "action": "training"}}, catalog=catalog)
    assert set(ok.steps) == {"a", "b"}
    with pytest.raises(WorkflowSpecError) as refused:
        validate({"c": {"agent": "ml/ml_trainer", "action": "training"}}, catalog=catalog)
    assert "unknown agent 'ml/ml_trainer'" in str(refused.value)

