"""The run stores: history queries and atomic updates on SQLite and PostgreSQL alike;
SQLite's URLs and durability settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.workflow import RunNotFound, RunState, StepState, Store, load_spec, open_store
from mesh.workflow.sqlite_store import SqliteStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Store:
    """Every test that takes ``store`` runs on both back ends."""
    backend: Store = request.getfixturevalue(f"{request.param}_store")
    return backend


SPEC = load_spec({"name": "demo", "steps": {
    "a": {"agent": "x"}, "b": {"agent": "y", "depends_on": ["a"]},
}})


def test_create_then_query(store: Store) -> None:
    run = store.create_run(SPEC, owner="host:1")
    got = store.get_run(run.id)
    assert (got.name, got.state, got.owner, got.error) == ("demo", RunState.RUNNING, "host:1", None)
    assert got.spec == SPEC.to_dict()
    steps = store.step_states(run.id)
    assert list(steps) == ["a", "b"]
    assert all(s.state is StepState.PENDING and s.attempt == 0 for s in steps.values())
    assert store.load_output(run.id, "a") is None


def test_list_runs_newest_first_and_by_state(store: Store) -> None:
    ids = [store.create_run(SPEC).id for _ in range(3)]
    store.apply(ids[0], run={"state": RunState.SUCCEEDED})
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert [r.id for r in store.list_runs(state=RunState.SUCCEEDED)] == [ids[0]]
    assert len(store.list_runs(limit=2)) == 2


def test_apply_updates_run_and_steps_together(store: Store) -> None:
    run = store.create_run(SPEC)
    store.apply(run.id, run={"state": RunState.FAILED, "error": "boom"}, steps={
        "a": {"state": StepState.FAILED, "attempt": 2, "failures": 2, "error": "boom",
              "instance": "x/2", "avoid": {"x/1", "x/2"}},
        "b": {"state": StepState.SKIPPED},
    })
    assert store.get_run(run.id).error == "boom"
    a = store.step_states(run.id)["a"]
    assert (a.state, a.attempt, a.failures, a.instance, a.avoid) == (
        StepState.FAILED, 2, 2, "x/2", ("x/1", "x/2"))
    assert store.step_states(run.id)["b"].state is StepState.SKIPPED


def test_a_failing_apply_changes_nothing(store: Store) -> None:
    run = store.create_run(SPEC)
    with pytest.raises(RunNotFound, match="has no step 'nope'"):
        store.apply(run.id, run={"state": RunState.FAILED},
                    steps={"a": {"state": StepState.SUCCEEDED}, "nope": {"state": "failed"}})
    assert store.get_run(run.id).state is RunState.RUNNING
    assert store.step_states(run.id)["a"].state is StepState.PENDING
    with pytest.raises(ValueError, match="unknown step field"):
        store.apply(run.id, steps={"a": {"state": StepState.RUNNING, "evil; DROP": 1}})
    with pytest.raises(ValueError, match="'exploded' is not a valid StepState"):
        store.apply(run.id, steps={"a": {"state": "exploded"}})
    assert store.step_states(run.id)["a"].state is StepState.PENDING


def test_outputs_are_stored_as_blobs(store: Store) -> None:
    run = store.create_run(SPEC)
    store.apply(run.id, steps={"a": {"state": StepState.SUCCEEDED, "output": b"\x81\xa1k\x01",
                                     "output_refs": ["artifact://sha256/ab"]}})
    assert store.load_output(run.id, "a") == b"\x81\xa1k\x01"
    assert store.step_states(run.id)["a"].output_refs == ("artifact://sha256/ab",)


def test_get_run_by_prefix_and_not_found(store: Store) -> None:
    store.create_run(SPEC, run_id="abcd0001")
    store.create_run(SPEC, run_id="abcd0002")
    assert store.get_run("abcd0001").id == "abcd0001"
    with pytest.raises(RunNotFound, match="ambiguous"):
        store.get_run("abcd")
    with pytest.raises(RunNotFound, match="no run 'ffff'"):
        store.get_run("ffff")
    with pytest.raises(RunNotFound):
        store.step_states("ffff")
    with pytest.raises(RunNotFound):
        store.apply("ffff", run={"state": RunState.FAILED})
    store.create_run(SPEC, run_id="0123456789")
    assert store.get_run("01234").id == "0123456789"


def test_wal_and_full_sync(sqlite_store: Store) -> None:
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.pragma("journal_mode") == "wal"
    assert sqlite_store.pragma("synchronous") == 2  # FULL
    assert sqlite_store.pragma("foreign_keys") == 1


def test_state_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state/runs.db"
    with open_store(url) as first:
        run = first.create_run(SPEC)
        first.apply(run.id, steps={"a": {"state": StepState.SUCCEEDED, "output": b"x"}})
    with open_store(url) as second:
        assert second.step_states(run.id)["a"].state is StepState.SUCCEEDED
        assert second.load_output(run.id, "a") == b"x"


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///relative.db") as s:
        s.create_run(SPEC)
    assert (tmp_path / "relative.db").is_file()
    with open_store(str(tmp_path / "bare.db")) as s:
        assert s.list_runs() == []
    assert (tmp_path / "bare.db").is_file()
    with open_store("sqlite://") as mem:
        mem.create_run(SPEC)
        assert len(mem.list_runs()) == 1
    with pytest.raises(ConfigError, match="unknown store URL scheme 'mysql'"):
        open_store("mysql://localhost/db")
    with pytest.raises(ConfigError, match="bad SQLite URL"):
        open_store("sqlite://host/db")


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="cannot use"):
        open_store(str(junk))


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "c.db"))
    s.close()
    with pytest.raises(Exception, match="closed"):
        s.list_runs()
