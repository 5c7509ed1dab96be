"""Leases: a run's owner renews ``lease_until`` while it drives the run and clears it when
done; another host takes the run over only once the lease (plus a grace for clock skew) has
run out; an owner that lost its lease stops and says so; old databases get the column.

"Another host" is an owner id with another host name; leases are short (a second or less)
and every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.procs import ManagedProcess
from mesh.errors import Unavailable
from mesh.workflow import (
    ArtifactStore,
    LeaseHeld,
    LeaseLost,
    RunConflict,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
    load_spec,
    open_store,
    process_owner,
)
from mesh.workflow.sqlite_store import SqliteStore

from ._helpers import DEADLINE, run_async, until
from .test_workflow_pg_store import fresh_schema

REPO = Path(__file__).resolve().parents[2]
SPEC = {"name": "two", "steps": {"train": {"agent": "x", "retries": 1, "backoff": 0},
                                 "deploy": {"agent": "x", "depends_on": ["train"]}}}
LEASE = 0.6  # s: renewed every 0.2 s
GRACE = 0.1
OTHER = "other-host.example:1:123-abc"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Store:
    """Leases are SQL columns written by compare-and-swap: checked on both back ends."""
    backend: Store = request.getfixturevalue(f"{request.param}_store")
    return backend


class Steps:
    """A ``call_step`` that logs ``(who, step, attempt)`` and holds ``train`` until
    ``release`` is set; ``cancelled`` lists the steps whose call was cancelled."""

    def __init__(self, who: str, release: asyncio.Event | None = None) -> None:
        self.who, self.release = who, release
        self.log: list[tuple[str, str, int]] = []
        self.cancelled: list[str] = []

    async def __call__(self, step: StepSpec, inputs: dict[str, Any], attempt: int,
                       avoid: set[str]) -> StepResult:
        self.log.append((self.who, step.name, attempt))
        if step.name == "train" and self.release is not None:
            try:
                await asyncio.wait_for(self.release.wait(), DEADLINE)
            except asyncio.CancelledError:
                self.cancelled.append(step.name)
                raise
        return StepResult({"by": self.who}, f"x/{self.who}")


def test_the_owner_renews_its_lease_while_it_drives_and_clears_it_when_done(
        store: Store, artifacts: ArtifactStore) -> None:
    async def main() -> tuple[float, float, Any]:
        release = asyncio.Event()
        calls = Steps("a", release)
        runner = WorkflowRunner(store, calls, artifact_store=artifacts, lease=LEASE)
        run_id = await runner.start(SPEC)
        first = store.get_run(run_id).lease_until
        assert first is not None
        await until(lambda: calls.log, what="train started")
        await until(lambda: (store.get_run(run_id).lease_until or 0) > first + LEASE / 3,
                    timeout=DEADLINE / 2, what="the lease renewed")
        renewed = store.get_run(run_id).lease_until
        assert renewed is not None
        release.set()
        return first, renewed, await runner.wait(run_id)

    start = time.time()
    first, renewed, record = run_async(main())
    assert start + LEASE <= first <= time.time() + LEASE
    assert renewed > first
    assert (record.state, record.lease_until) == (RunState.SUCCEEDED, None)  # released


def test_a_detached_run_gives_up_owner_and_lease(store: Store,
                                                 artifacts: ArtifactStore) -> None:
    async def main() -> str:
        calls = Steps("a", asyncio.Event())
        runner = WorkflowRunner(store, calls, artifact_store=artifacts, lease=LEASE)
        run_id = await runner.start(SPEC)
        await until(lambda: calls.log, what="train started")
        await runner.close()
        return run_id

    record = store.get_run(run_async(main()))
    assert (record.state, record.owner, record.lease_until) == (RunState.RUNNING, None, None)


def test_another_hosts_live_lease_refuses_a_resume_naming_owner_and_end(
        store: Store, artifacts: ArtifactStore) -> None:
    lease_until = time.time() + 3600
    run = store.create_run(load_spec(SPEC), owner=OTHER, lease_until=lease_until)
    before = store.get_run(run.id)
    calls = Steps("b")
    runner = WorkflowRunner(store, calls, artifact_store=artifacts, lease_grace=GRACE)
    with pytest.raises(LeaseHeld, match=f"driven by another owner, {OTHER}, on another host, "
                                        "whose lease runs until") as held:
        run_async(runner.resume(run.id))
    assert (held.value.owner, held.value.lease_until) == (OTHER, lease_until)
    assert held.value.takeover_at == pytest.approx(lease_until + GRACE)
    assert time.strftime("%Y-%m-%dT%H:%M", time.gmtime(lease_until)) in held.value.message
    assert store.get_run(run.id) == before  # nothing written
    assert calls.log == []


def test_another_host_without_a_lease_is_refused_as_before(store: Store,
                                                          artifacts: ArtifactStore) -> None:
    run = store.create_run(load_spec(SPEC), owner=OTHER)  # as a build before leases wrote it
    runner = WorkflowRunner(store, Steps("b"), artifact_store=artifacts)
    with pytest.raises(RunConflict, match="with no lease to tell whether it is alive") as no:
        run_async(runner.resume(run.id))
    assert not isinstance(no.value, LeaseHeld)
    assert store.get_run(run.id).owner == OTHER


def test_another_host_takes_over_once_the_lease_and_grace_ran_out(
        store: Store, artifacts: ArtifactStore) -> None:
    lease_until = time.time() + LEASE
    run = store.create_run(load_spec(SPEC), owner=OTHER, lease_until=lease_until)
    store.apply(run.id, steps={"train": {"state": StepState.RUNNING, "attempt": 1}})
    calls = Steps("b")
    runner = WorkflowRunner(store, calls, artifact_store=artifacts, owner="host-b:2:b",
                            lease_grace=GRACE)

    async def main() -> Any:
        with pytest.raises(LeaseHeld):  # still leased
            await runner.resume(run.id)
        await until(lambda: time.time() > lease_until + GRACE, what="the lease ran out")
        await runner.resume(run.id)  # no force needed now
        return await runner.wait(run.id)

    record = run_async(main())
    steps = store.step_states(run.id)
    assert (record.state, record.owner) == (RunState.SUCCEEDED, "host-b:2:b")
    assert calls.log == [("b", "train", 2), ("b", "deploy", 1)]
    assert steps["train"].failures == 1  # the attempt the dead owner had in flight counts


def test_on_this_host_liveness_decides_not_the_lease(tmp_path: Path,
                                                    artifacts: ArtifactStore) -> None:
    host, pid = socket.gethostname(), os.getpid()
    with open_store(str(tmp_path / "runs.db")) as store:
        alive = store.create_run(load_spec(SPEC), owner=process_owner(),
                                 lease_until=time.time() - 3600)  # lapsed, but alive here
        dead = store.create_run(load_spec(SPEC), owner=f"{host}:{pid}:0-deadbeef",
                                lease_until=time.time() + 3600)  # leased, but gone
        runner = WorkflowRunner(store, Steps("b"), artifact_store=artifacts, owner="b:2:b")
        with pytest.raises(RunConflict, match="which is alive on this host"):
            run_async(runner.resume(alive.id))

        async def take_dead() -> Any:
            await runner.resume(dead.id)
            return await runner.wait(dead.id)

        record = run_async(take_dead())
        assert store.get_run(alive.id).owner == process_owner()
    assert (record.state, record.owner) == (RunState.SUCCEEDED, "b:2:b")


def test_force_takes_over_a_live_lease(store: Store, artifacts: ArtifactStore) -> None:
    run = store.create_run(load_spec(SPEC), owner=OTHER, lease_until=time.time() + 3600)
    runner = WorkflowRunner(store, Steps("b"), artifact_store=artifacts, owner="host-b:2:b")

    async def forced() -> Any:
        await runner.resume(run.id, force=True)
        return await runner.wait(run.id)

    record = run_async(forced())
    assert (record.state, record.owner, record.lease_until) == (
        RunState.SUCCEEDED, "host-b:2:b", None)


class RenewAfterRead(SqliteStore):
    """A real SQLite store in which the old owner renews its lease after the resuming runner
    has read the run and before it claims it."""

    def __init__(self, path: Path, renew: Any) -> None:
        super().__init__(path)
        self.renew = renew

    def step_states(self, run_id: str) -> Any:
        steps = super().step_states(run_id)
        renew, self.renew = self.renew, None
        if renew is not None:
            renew()
        return steps


def test_a_renewal_between_read_and_claim_wins(tmp_path: Path,
                                              artifacts: ArtifactStore) -> None:
    db = tmp_path / "runs.db"
    with SqliteStore(db) as owner_store:
        run = owner_store.create_run(load_spec(SPEC), owner=OTHER,
                                     lease_until=time.time() - 60)  # lapsed: takeable

        def renew() -> None:
            owner_store.apply(run.id, run={"lease_until": time.time() + 60},
                              expect={"state": RunState.RUNNING, "owner": OTHER})

        calls = Steps("b")
        with RenewAfterRead(db, renew) as mine:
            runner = WorkflowRunner(mine, calls, artifact_store=artifacts, owner="host-b:2:b")
            with pytest.raises(RunConflict, match="changed while this runner took it over"):
                run_async(runner.resume(run.id))
        assert owner_store.get_run(run.id).owner == OTHER
        assert calls.log == []


def test_a_forced_takeover_stops_the_old_owners_steps_at_its_next_renewal(
        tmp_path: Path, artifacts: ArtifactStore) -> None:
    """The old owner need not wait for a step to end to learn it lost the run: its next
    renewal fails, and its steps in flight are cancelled then (no double execution)."""
    db = tmp_path / "runs.db"

    async def main(a_store: Store, b_store: Store) -> Any:
        a_calls, b_calls = Steps("a", asyncio.Event()), Steps("b")  # a's train never ends
        a = WorkflowRunner(a_store, a_calls, artifact_store=artifacts, owner="host-a:1:a",
                           lease=LEASE)
        b = WorkflowRunner(b_store, b_calls, artifact_store=artifacts, owner="host-b:2:b")
        run_id = await a.start(SPEC)
        await until(lambda: a_calls.log, what="train started on host a")
        await b.resume(run_id, force=True)  # the lease still holds: only force takes it
        a_record = await a.wait(run_id, timeout=DEADLINE / 2)  # not a lapse: no LeaseLost
        return a_calls, b_calls, a_record, await b.wait(run_id)

    with open_store(str(db)) as a_store, open_store(str(db)) as b_store:
        a_calls, b_calls, a_record, record = run_async(main(a_store, b_store))
    assert a_calls.cancelled == ["train"]
    assert a_calls.log == [("a", "train", 1)]
    assert a_record.owner == "host-b:2:b"
    assert b_calls.log == [("b", "train", 2), ("b", "deploy", 1)]
    assert (record.state, record.owner) == (RunState.SUCCEEDED, "host-b:2:b")


class RenewalsFail(SqliteStore):
    """A real SQLite store whose lease renewals fail once ``failing`` is set (the database
    unreachable for this process only); every other write goes through."""

    failing = False

    def apply(self, run_id: str, *, run: Any = None, steps: Any = None,
              expect: Any = None) -> None:
        if self.failing and run is not None and set(run) == {"lease_until"}:
            raise Unavailable("the store is unreachable (test)")
        super().apply(run_id, run=run, steps=steps, expect=expect)


def test_an_owner_that_cannot_renew_stops_when_its_lease_runs_out(
        tmp_path: Path, artifacts: ArtifactStore) -> None:
    db = tmp_path / "runs.db"

    async def main(a_store: RenewalsFail, b_store: Store) -> Any:
        a_calls, b_calls = Steps("a", asyncio.Event()), Steps("b")
        a = WorkflowRunner(a_store, a_calls, artifact_store=artifacts, owner="host-a:1:a",
                           lease=LEASE)
        run_id = await a.start(SPEC)
        await until(lambda: a_calls.log, what="train started on host a")
        a_store.failing = True
        with pytest.raises(LeaseLost, match="could not renew it") as lost:
            await a.wait(run_id, timeout=DEADLINE / 2)
        stored = b_store.get_run(run_id)
        b = WorkflowRunner(b_store, b_calls, artifact_store=artifacts, owner="host-b:2:b")
        await b.resume(run_id)  # released: no force, no waiting for the grace
        return lost.value, stored, a_calls, b_calls, await b.wait(run_id)

    with RenewalsFail(db) as a_store, open_store(str(db)) as b_store:
        lost, stored, a_calls, b_calls, record = run_async(main(a_store, b_store))
        steps = b_store.step_states(record.id)
    assert lost.owner == "host-a:1:a"
    assert lost.lease_until is not None
    assert a_calls.cancelled == ["train"]  # stopped before another host could take over
    assert (stored.owner, stored.lease_until) == (None, None)  # given up once the store answered
    assert a_calls.log == [("a", "train", 1)]
    assert b_calls.log == [("b", "train", 2), ("b", "deploy", 1)]
    assert (record.state, record.owner) == (RunState.SUCCEEDED, "host-b:2:b")
    assert steps["train"].failures == 0  # a stop by this process is not a failed attempt


def test_an_owner_frozen_past_its_lease_is_taken_over_and_stops_at_its_next_write(
        tmp_path: Path, artifacts: ArtifactStore) -> None:
    """Host a's loop blocks inside a step (a frozen process: its lease keeper cannot run
    either); host b, in another thread with its own loop and store handle, takes the run
    over once the lease ran out; when a thaws, its write is refused and it says so."""
    db = tmp_path / "runs.db"
    frozen, thaw, a_done = threading.Event(), threading.Event(), threading.Event()
    log: list[tuple[str, str, int]] = []
    problems: list[BaseException] = []
    b_record: list[Any] = []

    async def a_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                     avoid: set[str]) -> StepResult:
        log.append(("a", step.name, attempt))
        if step.name == "train":
            frozen.set()
            assert thaw.wait(DEADLINE)  # blocks host a's whole event loop
        return StepResult({"by": "a"}, "x/a")

    async def b_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                     avoid: set[str]) -> StepResult:
        log.append(("b", step.name, attempt))
        if step.name == "train":  # hold the run until host a has thawed and given up
            await until(a_done.is_set, what="host a gave up")
        return StepResult({"by": "b"}, "x/b")

    async def host_b(run_id: str) -> None:
        with open_store(str(db)) as store:
            b = WorkflowRunner(store, b_step, artifact_store=artifacts, owner="host-b:2:b",
                               lease=LEASE, lease_grace=GRACE)
            lapses = (store.get_run(run_id).lease_until or 0) + GRACE
            await until(lambda: time.time() > lapses, what="host a's lease ran out")
            await b.resume(run_id)
            await until(lambda: ("b", "train", 2) in log, what="train started on host b")
            thaw.set()
            b_record.append(await b.wait(run_id))

    def host_b_thread(run_id: str) -> None:
        try:
            assert frozen.wait(DEADLINE)
            run_async(host_b(run_id))
        except BaseException as exc:
            problems.append(exc)
        finally:
            thaw.set()  # never leave host a blocked

    async def host_a(store: Store) -> LeaseLost | None:
        a = WorkflowRunner(store, a_step, artifact_store=artifacts, owner="host-a:1:a",
                           lease=LEASE)
        run_id = await a.start(SPEC)
        thread = threading.Thread(target=host_b_thread, args=(run_id,))
        thread.start()
        try:
            await a.wait(run_id)
        except LeaseLost as exc:
            return exc
        finally:
            a_done.set()
            await asyncio.to_thread(thread.join, DEADLINE)
        return None

    with open_store(str(db)) as store:
        lost = run_async(host_a(store))
        steps = store.step_states(b_record[0].id) if b_record else {}
    assert not problems, problems
    assert lost is not None, "host a did not say it lost the run"
    assert lost.owner == "host-b:2:b"
    assert "ran out" in lost.message
    assert "host-b:2:b took the run over" in lost.message
    assert log == [("a", "train", 1), ("b", "train", 2), ("b", "deploy", 1)]  # deploy once
    assert (b_record[0].state, b_record[0].owner) == (RunState.SUCCEEDED, "host-b:2:b")
    assert (steps["train"].instance, steps["deploy"].instance) == ("x/b", "x/b")


V1_SQLITE = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, error TEXT,
    owner TEXT);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL, position INTEGER NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, started REAL,
    finished REAL, error TEXT, instance TEXT, avoid TEXT NOT NULL DEFAULT '[]', output BLOB,
    output_refs TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (run_id, name));
INSERT INTO runs VALUES ('r1', 'old', '{"name": "old", "steps": {"a": {"agent": "x"}}}',
    'running', 1.0, 2.0, NULL, 'other-host.example:1:123-abc');
INSERT INTO steps (run_id, name, position, state) VALUES ('r1', 'a', 0, 'pending');
PRAGMA user_version = 1;
"""


def test_a_sqlite_file_from_before_leases_gets_the_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_SQLITE)
    conn.close()
    with SqliteStore(db) as store:
        old = store.get_run("r1")
        assert (old.owner, old.lease_until) == (OTHER, None)
        store.apply("r1", run={"lease_until": 123.5}, expect={"owner": OTHER})
        assert store.get_run("r1").lease_until == 123.5
        assert store.pragma("user_version") == 2
    with SqliteStore(db) as again:  # opening it again changes nothing
        assert again.get_run("r1").lease_until == 123.5


def test_a_postgres_database_from_before_leases_gets_the_column(pg_dsn: str) -> None:
    with fresh_schema(pg_dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
                         " spec TEXT NOT NULL, state TEXT NOT NULL,"
                         " created DOUBLE PRECISION NOT NULL,"
                         " updated DOUBLE PRECISION NOT NULL, error TEXT, owner TEXT)")
            conn.execute("INSERT INTO runs VALUES ('r1', 'old', %s, 'running', 1, 2, NULL,"
                         " %s)", ('{"name": "old", "steps": {"a": {"agent": "x"}}}', OTHER))
        with open_store(dsn) as store:
            old = store.get_run("r1")
            assert (old.owner, old.lease_until) == (OTHER, None)
            store.apply("r1", run={"lease_until": 123.5}, expect={"owner": OTHER})
        with open_store(dsn) as again:
            assert again.get_run("r1").lease_until == 123.5


def _agp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=DEADLINE * 2, cwd=REPO, check=False)


def test_cli_resume_force_reaches_the_takeover(router: ManagedProcess, tmp_path: Path) -> None:
    """``agp workflow resume RUN`` refuses a run another host holds the lease on;
    ``--force`` takes it over (every step is done, so no agent is needed to finish it)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    endpoint = router.ready_info["router"]
    with open_store(url) as store:
        run = store.create_run(load_spec(SPEC), owner=OTHER, lease_until=time.time() + 3600)
        store.apply(run.id, steps={n: {"state": StepState.SUCCEEDED} for n in ("train",
                                                                               "deploy")})
        before = store.get_run(run.id)
    refused = _agp("workflow", "resume", run.id[:8], "--store", url, "--endpoint", endpoint)
    assert refused.returncode == 1, refused.stderr
    assert f"driven by another owner, {OTHER}, on another host, whose lease" in refused.stderr
    with open_store(url) as store:
        assert store.get_run(run.id) == before

    forced = _agp("workflow", "resume", run.id[:8], "--store", url, "--endpoint", endpoint,
                  "--force")
    assert forced.returncode == 0, forced.stderr + forced.stdout
    assert f"run {run.id} succeeded" in forced.stdout
    with open_store(url) as store:
        after = store.get_run(run.id)
    assert after.state is RunState.SUCCEEDED
    assert after.owner is not None
    assert after.owner.startswith(f"{socket.gethostname()}:")


def test_an_owner_named_without_a_pid_is_judged_by_its_lease() -> None:
    """A runner given its own name (``owner="orchestrator-a"``) is no process this host can
    look up: its lease decides, as for another host's owner."""
    import time

    from mesh.workflow.owner import LEASE_GRACE, owner_gone

    now = time.time()
    assert not owner_gone("orchestrator-a", now + 20, now=now)
    assert not owner_gone("orchestrator-a", None, now=now)
    assert owner_gone("orchestrator-a", now - LEASE_GRACE - 1, now=now)
    assert owner_gone(None, now + 20, now=now)
