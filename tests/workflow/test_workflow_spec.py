"""Reading specs: the seed's dict shapes, their TOML/JSON twins, and file-level errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.workflow import (
    PipelineSpec,
    WorkflowSpec,
    WorkflowSpecError,
    load_document,
    load_pipeline,
    load_spec,
    parse_rate,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"

SEED_WORKFLOW = {
    "data_collection": {"agent": "data_analyst", "timeout": 300},
    "preprocessing": {"agent": "data_analyst", "depends_on": ["data_collection"]},
    "training": {"agent": "ml_trainer", "depends_on": ["preprocessing"]},
    "evaluation": {"agent": "ml_trainer", "depends_on": ["training"]},
    "deployment": {"agent": "inference_service", "depends_on": ["evaluation"]},
}
SEED_PIPELINE = {
    "data_stream": {"source": "stock_api", "rate": "1000/sec"},
    "analysis": {"agent": "data_analyst", "pattern": "streaming"},
    "prediction": {"agent": "ml_trainer", "model": "lstm"},
    "alerts": {"agent": "notification", "threshold": 0.8},
}


def test_seed_workflow_dict_parses_with_defaults() -> None:
    spec = load_spec(SEED_WORKFLOW)
    assert spec.order == ("data_collection", "preprocessing", "training", "evaluation",
                          "deployment")
    first = spec.steps["data_collection"]
    assert (first.agent, first.action, first.timeout, first.retries) == (
        "data_analyst", "data_collection", 300.0, 0)
    assert spec.steps["training"].depends_on == ("preprocessing",)
    assert spec.steps["training"].timeout is None
    assert spec.dependents("training") == ("evaluation",)


def test_wrapper_and_bare_shapes_give_the_same_steps() -> None:
    bare = load_spec(SEED_WORKFLOW)
    wrapped = load_spec({"name": "ml", "steps": SEED_WORKFLOW})
    assert wrapped.name == "ml"
    assert wrapped.steps == bare.steps


def test_topological_order_puts_dependencies_first_whatever_the_file_order() -> None:
    spec = load_spec({
        "report": {"agent": "notification", "depends_on": ["left", "right"]},
        "right": {"agent": "b", "depends_on": ["root"]},
        "left": {"agent": "a", "depends_on": ["root"]},
        "root": {"agent": "acme/ml/data_analyst", "action": "collect"},
    })
    order = spec.order
    assert order[0] == "root"
    assert order[-1] == "report"
    assert spec.steps["root"].action == "collect"


def test_spec_round_trips_through_to_dict() -> None:
    spec = load_spec(EXAMPLES / "ml_pipeline.toml")
    again = validate(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_example_toml_and_json_twins_load() -> None:
    toml_spec = load_spec(EXAMPLES / "ml_pipeline.toml")
    json_spec = load_spec(EXAMPLES / "ml_pipeline.json")
    assert toml_spec.name == json_spec.name == "ml_pipeline"
    assert toml_spec.order == json_spec.order == tuple(SEED_WORKFLOW)
    assert toml_spec.steps["data_collection"].params["dataset"] == "breast_cancer"
    assert toml_spec.steps["training"].params["model"] == "random_forest"
    assert json_spec.steps["training"].params["model"] == "logistic_regression"
    assert toml_spec.steps["preprocessing"].params["test_size"] == 0.2


def test_bare_toml_file_takes_its_name_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nightly.toml"
    path.write_text('[collect]\nagent = "data_analyst"\n\n'
                    '[train]\nagent = "ml_trainer"\ndepends_on = ["collect"]\nretries = 2\n')
    spec = load_spec(path)
    assert spec.name == "nightly"
    assert spec.steps["train"].retries == 2


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.toml", "[a\nagent = 1", "TOML syntax error"),
    ("bad.json", '{"a": {"agent": }', "JSON syntax error at line 1"),
    ("list.json", '[{"agent": "x"}]', "the top level must be a table/object, got list"),
    ("spec.yaml", "a: {agent: x}", "unknown file type '.yaml'"),
])
def test_file_errors_are_typed_and_named(tmp_path: Path, name: str, text: str,
                                         message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WorkflowSpecError) as info:
        load_spec(path)
    assert message in info.value.problems[0]
    assert info.value.source == str(path)
    assert isinstance(info.value, ConfigError)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowSpecError, match="cannot read the file"):
        load_spec(tmp_path / "nope.toml")


def test_seed_pipeline_parses_stages_in_order() -> None:
    pipe = load_pipeline(SEED_PIPELINE)
    assert [s.name for s in pipe.stages] == list(SEED_PIPELINE)
    source, analysis, prediction, alerts = pipe.stages
    assert (source.source, source.rate, source.agent) == ("stock_api", 1000.0, None)
    assert (analysis.agent, analysis.pattern) == ("data_analyst", "streaming")
    assert prediction.params == {"model": "lstm"}
    assert alerts.params == {"threshold": 0.8}


def test_example_streaming_pipeline_loads_and_is_detected() -> None:
    doc = load_document(EXAMPLES / "streaming_pipeline.toml")
    assert isinstance(doc, PipelineSpec)
    assert doc.name == "market_watch"
    assert doc.stages[0].rate == 1000.0
    assert isinstance(load_document(SEED_WORKFLOW), WorkflowSpec)
    assert isinstance(load_document(SEED_PIPELINE), PipelineSpec)


@pytest.mark.parametrize(("text", "per_second"), [
    ("1000/sec", 1000.0), ("1000/s", 1000.0), ("5k/s", 5000.0), ("30 per min", 0.5),
    ("2/ms", 2000.0), ("7200/hour", 2.0), (250, 250.0), (0.5, 0.5),
])
def test_parse_rate(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("bad", ["fast", "10/fortnight", "-5/s", 0, True, "0/s"])
def test_parse_rate_rejects_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)


def test_pipeline_problems_are_collected() -> None:
    with pytest.raises(WorkflowSpecError) as info:
        load_pipeline({
            "analysis": {"agent": "data_analyst", "pattern": "telepathy"},
            "feed": {"source": "x", "agent": "y", "rate": "lots"},
        })
    problems = info.value.problems
    assert "stage 'analysis': pattern must be one of request, streaming, pubsub, send, " \
           "got 'telepathy'" in problems
    assert "stage 'feed': needs exactly one of 'agent' or 'source'" in problems
    assert any(p.startswith("stage 'feed': rate must look like") for p in problems)


def test_pipeline_needs_a_source_first() -> None:
    with pytest.raises(WorkflowSpecError, match="the first stage must have a 'source'"):
        load_pipeline({"analysis": {"agent": "a"}, "feed": {"source": "s"}})
