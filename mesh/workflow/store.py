"""Durable run state: the :class:`Store` interface, its records, and ``open_store(url)``.

Every change the runner makes is one call to :meth:`Store.apply`, and each call is one
database transaction covering the run row and any number of step rows. So the state after a
kill -9 is always one the runner wrote on purpose (a step succeeded *with* its output; a run
failed *with* its siblings marked cancelled), never half of one. The SQL shared by the
SQLite and PostgreSQL back ends lives in :class:`SqlStore`; they differ only in connection,
placeholder and transaction handling.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from mesh.errors import ConfigError
from mesh.workflow.model import (
    RunConflict,
    RunNotFound,
    RunState,
    StepState,
    WorkflowSpec,
    WorkflowSpecError,
)
from mesh.workflow.owner import LEASE_GRACE

RUN_FIELDS: Final = frozenset({"state", "error", "owner", "lease_until"})
EXPECT_FIELDS: Final = frozenset({"state", "owner", "updated", "lease_until"})
STEP_FIELDS: Final = frozenset({
    "state", "attempt", "failures", "started", "finished", "error", "instance", "avoid",
    "output", "output_refs",
})
MAX_ERROR_CHARS: Final = 4000
PRUNE_BATCH: Final = 500  # runs per delete transaction: a writer waits for one batch at most
_ID_PREFIX_RE: Final = re.compile(r"^[0-9a-f]{4,32}$")


@dataclass(frozen=True)
class RunRecord:
    """One run as stored: its spec (the wrapper dict), state and last error; ``owner``
    drives it, and holds it until ``lease_until`` (epoch seconds) unless it renews."""

    id: str
    name: str
    spec: dict[str, Any]
    state: RunState
    created: float
    updated: float
    error: str | None = None
    owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as stored; the output blob itself is read by ``load_output``.

    ``attempt`` counts attempts started, ``failures`` those that failed (the retry budget),
    ``avoid`` the instances that failed it, ``output_refs`` the artifact URIs it points at.
    """

    run_id: str
    name: str
    state: StepState
    attempt: int = 0
    failures: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    instance: str | None = None
    avoid: tuple[str, ...] = ()
    output_refs: tuple[str, ...] = ()

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else time.time()
        return max(0.0, end - self.started)


@dataclass(frozen=True)
class PrunedRun:
    """A run :meth:`Store.prune_runs` deleted (or, on a dry run, would); ``finished`` is
    its last change."""

    id: str
    name: str
    state: RunState
    finished: float


@dataclass(frozen=True)
class Pruned:
    """What a prune removed: the runs, and the artifact URIs their steps pointed at (some
    may still be in use by a kept run: see :meth:`Store.artifact_refs`)."""

    runs: tuple[PrunedRun, ...]
    refs: frozenset[str]


class Store(ABC):
    """Where runs live. Implementations must make each :meth:`apply` atomic and durable."""

    @abstractmethod
    def create_run(self, spec: WorkflowSpec, *, run_id: str | None = None,
                   owner: str | None = None, lease_until: float | None = None) -> RunRecord:
        """Insert a ``running`` run and all its steps ``pending``, in one transaction."""

    @abstractmethod
    def apply(self, run_id: str, *, run: Mapping[str, Any] | None = None,
              steps: Mapping[str, Mapping[str, Any]] | None = None,
              expect: Mapping[str, Any] | None = None) -> None:
        """Update the run's columns (:data:`RUN_FIELDS`) and steps' (:data:`STEP_FIELDS`)
        in one transaction; ``None`` values store NULL.

        ``expect`` makes it a compare-and-swap: the run's columns (:data:`EXPECT_FIELDS`)
        must hold these values (``None``: NULL) when the transaction runs, or nothing is
        written and :class:`RunConflict` says what the run holds instead. That is how two
        processes never both drive a run, and how a cancel is never overwritten."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id or unique id prefix; :class:`RunNotFound` otherwise."""

    @abstractmethod
    def list_runs(self, *, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        """Most recent first, optionally only runs in ``state``."""

    @abstractmethod
    def step_states(self, run_id: str) -> dict[str, StepRecord]:
        """Every step of the run, in the spec's order."""

    @abstractmethod
    def load_output(self, run_id: str, step: str) -> bytes | None:
        """The stored (encoded) output of a step, or None if it has none."""

    @abstractmethod
    def prune_runs(self, *, finished_before: float, keep: int = 0,
                   dry_run: bool = False) -> Pruned:
        """Delete the finished runs (succeeded, failed, cancelled) last changed before
        ``finished_before`` (epoch seconds), with their steps, except each workflow's
        ``keep`` most recent finished runs. Never a ``running`` run (one a dead driver left
        is resumable) nor one whose lease (plus :data:`LEASE_GRACE`) has not run out: a
        cancelled run's driver may still be stopping it. ``dry_run`` deletes nothing."""

    @abstractmethod
    def artifact_refs(self, *, excluding: Collection[str] = ()) -> set[str]:
        """Every artifact URI a step points at, but for the steps of runs in ``excluding``."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; further calls fail."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqlStore(Store):
    """The SQL both back ends share. Subclasses give ``_tx`` (a transaction yielding a
    cursor), ``_q`` (rewrite ``?`` placeholders) and ``_blob`` (bytes from a fetched blob)."""

    @abstractmethod
    def _tx(self, *, write: bool = True) -> AbstractContextManager[Any]: ...

    def _q(self, sql: str) -> str:
        return sql

    def _blob(self, value: Any) -> bytes | None:
        return None if value is None else bytes(value)

    def create_run(self, spec: WorkflowSpec, *, run_id: str | None = None,
                   owner: str | None = None, lease_until: float | None = None) -> RunRecord:
        run_id = run_id or uuid.uuid4().hex
        now = time.time()
        record = RunRecord(id=run_id, name=spec.name, spec=spec.to_dict(),
                           state=RunState.RUNNING, created=now, updated=now, owner=owner,
                           lease_until=lease_until)
        try:  # validate() refuses such specs; this guards a WorkflowSpec built by hand
            spec_json = json.dumps(record.spec, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise WorkflowSpecError([f"the spec cannot be stored as JSON: {exc}"]) from None
        with self._tx() as cur:
            cur.execute(self._q(
                "INSERT INTO runs (id, name, spec, state, created, updated, error, owner,"
                " lease_until) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)"),
                (run_id, spec.name, spec_json, record.state.value, now, now, owner,
                 lease_until))
            for position, name in enumerate(spec.steps):
                cur.execute(self._q(
                    "INSERT INTO steps (run_id, name, position, state) VALUES (?, ?, ?, ?)"),
                    (run_id, name, position, StepState.PENDING.value))
        return record

    def apply(self, run_id: str, *, run: Mapping[str, Any] | None = None,
              steps: Mapping[str, Mapping[str, Any]] | None = None,
              expect: Mapping[str, Any] | None = None) -> None:
        run_cols = _columns(run or {}, RUN_FIELDS, RunState)
        step_cols = {name: _columns(cols, STEP_FIELDS, StepState) for name, cols in
                     (steps or {}).items()}
        guard = _columns(expect or {}, EXPECT_FIELDS, RunState)
        where = "".join(f" AND {k} IS NULL" if v is None else f" AND {k} = ?"
                        for k, v in guard.items())
        with self._tx() as cur:
            sets = ", ".join([f"{k} = ?" for k in run_cols] + ["updated = ?"])
            cur.execute(self._q(f"UPDATE runs SET {sets} WHERE id = ?{where}"),  # noqa: S608
                        (*run_cols.values(), time.time(), run_id,
                         *(v for v in guard.values() if v is not None)))
            if cur.rowcount != 1:
                cur.execute(self._q("SELECT state, owner FROM runs WHERE id = ?"), (run_id,))
                row = cur.fetchone()
                if row is None:
                    raise RunNotFound(f"no run {run_id!r}")
                raise RunConflict(
                    f"run {run_id} is {row[0]} with owner {row[1] or 'none'}; expected "
                    + ", ".join(f"{k} {v}" for k, v in guard.items()),
                    state=RunState(row[0]), owner=row[1])
            for name, cols in step_cols.items():
                if not cols:
                    continue
                sets = ", ".join(f"{k} = ?" for k in cols)
                cur.execute(self._q(
                    f"UPDATE steps SET {sets} WHERE run_id = ? AND name = ?"),  # noqa: S608
                    (*cols.values(), run_id, name))
                if cur.rowcount != 1:
                    raise RunNotFound(f"run {run_id!r} has no step {name!r}")

    def get_run(self, run_id: str) -> RunRecord:
        with self._tx(write=False) as cur:
            cur.execute(self._q(_SELECT_RUN + " WHERE id = ?"), (run_id,))
            rows = cur.fetchall()
            if not rows and _ID_PREFIX_RE.match(run_id):
                cur.execute(self._q(_SELECT_RUN + " WHERE id LIKE ? LIMIT 2"),
                            (run_id + "%",))
                rows = cur.fetchall()
        if len(rows) > 1:
            raise RunNotFound(f"run id prefix {run_id!r} is ambiguous")
        if not rows:
            raise RunNotFound(f"no run {run_id!r}")
        return _run_record(rows[0])

    def list_runs(self, *, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        limit = max(1, min(int(limit), 10_000))
        where, params = (" WHERE state = ?", (RunState(state).value,)) if state else ("", ())
        with self._tx(write=False) as cur:
            cur.execute(self._q(_SELECT_RUN + where + " ORDER BY created DESC, id LIMIT ?"),
                        (*params, limit))
            return [_run_record(row) for row in cur.fetchall()]

    def step_states(self, run_id: str) -> dict[str, StepRecord]:
        with self._tx(write=False) as cur:
            cur.execute(self._q(_SELECT_STEPS + " WHERE run_id = ? ORDER BY position"),
                        (run_id,))
            rows = cur.fetchall()
            if not rows:
                cur.execute(self._q("SELECT 1 FROM runs WHERE id = ?"), (run_id,))
                if cur.fetchone() is None:
                    raise RunNotFound(f"no run {run_id!r}")
        return {row[1]: _step_record(row) for row in rows}

    def load_output(self, run_id: str, step: str) -> bytes | None:
        with self._tx(write=False) as cur:
            cur.execute(self._q("SELECT output FROM steps WHERE run_id = ? AND name = ?"),
                        (run_id, step))
            row = cur.fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id!r} has no step {step!r}")
        return self._blob(row[0])

    def prune_runs(self, *, finished_before: float, keep: int = 0,
                   dry_run: bool = False) -> Pruned:
        if keep < 0:
            raise ConfigError(f"keep must be 0 or more, not {keep}")
        lease_before = time.time() - LEASE_GRACE
        with self._tx(write=False) as cur:
            cur.execute(self._q(_SELECT_PRUNABLE), (keep, finished_before, lease_before))
            runs = [PrunedRun(row[0], row[1], RunState(row[2]), row[3])
                    for row in cur.fetchall()]
        if dry_run:
            ids = {r.id for r in runs}
            return Pruned(tuple(runs), frozenset(self._refs(lambda run_id: run_id in ids)))
        deleted: set[str] = set()
        refs: set[str] = set()
        for start in range(0, len(runs), PRUNE_BATCH):
            batch = [r.id for r in runs[start:start + PRUNE_BATCH]]
            marks = ", ".join("?" * len(batch))
            with self._tx() as cur:  # the run's conditions are checked again as it goes
                cur.execute(self._q(
                    f"SELECT run_id, output_refs FROM steps WHERE run_id IN ({marks})"  # noqa: S608
                    " AND output_refs <> '[]'"), batch)
                pointed = cur.fetchall()
                cur.execute(self._q(f"DELETE FROM runs WHERE id IN ({marks}) AND {_PRUNABLE}"),  # noqa: S608
                            (*batch, finished_before, lease_before))
                cur.execute(self._q(f"SELECT id FROM runs WHERE id IN ({marks})"), batch)  # noqa: S608
                gone = set(batch) - {row[0] for row in cur.fetchall()}
            deleted |= gone
            refs.update(uri for run_id, uris in pointed if run_id in gone
                        for uri in json.loads(uris))
        return Pruned(tuple(r for r in runs if r.id in deleted), frozenset(refs))

    def artifact_refs(self, *, excluding: Collection[str] = ()) -> set[str]:
        skip = set(excluding)
        return self._refs(lambda run_id: run_id not in skip)

    def _refs(self, wanted: Callable[[str], bool]) -> set[str]:
        """The artifact URIs of the steps whose run id ``wanted`` accepts."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT run_id, output_refs FROM steps WHERE output_refs <> '[]'")
            rows = cur.fetchall()
        return {uri for run_id, uris in rows if wanted(run_id) for uri in json.loads(uris)}


_PRUNABLE: Final = ("state IN ('succeeded', 'failed', 'cancelled') AND updated < ?"
                    " AND (lease_until IS NULL OR lease_until < ?)")
# each workflow's finished runs, newest first: those past the first ``keep`` may go
_SELECT_PRUNABLE: Final = (
    "SELECT id, name, state, updated FROM (SELECT id, name, state, updated, lease_until,"
    " ROW_NUMBER() OVER (PARTITION BY name ORDER BY created DESC, id) AS newer FROM runs"
    " WHERE state IN ('succeeded', 'failed', 'cancelled')) AS finished WHERE newer > ?"
    " AND updated < ? AND (lease_until IS NULL OR lease_until < ?) ORDER BY updated, id")
_SELECT_RUN: Final = ("SELECT id, name, spec, state, created, updated, error, owner, lease_until"
                      " FROM runs")
_SELECT_STEPS: Final = ("SELECT run_id, name, state, attempt, failures, started, finished, "
                        "error, instance, avoid, output_refs FROM steps")


def _columns(values: Mapping[str, Any], allowed: frozenset[str],
             states: type[RunState] | type[StepState]) -> dict[str, Any]:
    """Check column names against a fixed set (they end up in SQL) and convert values."""
    unknown = set(values) - allowed
    if unknown:
        what = {RUN_FIELDS: "run", EXPECT_FIELDS: "expected run"}.get(allowed, "step")
        raise ValueError(f"unknown {what} field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, val in values.items():
        if key == "state":
            val = states(val).value
        elif key in ("avoid", "output_refs"):
            val = json.dumps(sorted(set(val)) if key == "avoid" else list(val))
        elif key == "error" and isinstance(val, str):
            val = val[:MAX_ERROR_CHARS]
        out[key] = val
    return out


def _run_record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(id=row[0], name=row[1], spec=json.loads(row[2]), state=RunState(row[3]),
                     created=row[4], updated=row[5], error=row[6], owner=row[7],
                     lease_until=row[8])


def _step_record(row: Sequence[Any]) -> StepRecord:
    return StepRecord(run_id=row[0], name=row[1], state=StepState(row[2]), attempt=row[3],
                      failures=row[4], started=row[5], finished=row[6], error=row[7],
                      instance=row[8], avoid=tuple(json.loads(row[9])),
                      output_refs=tuple(json.loads(row[10])))


def open_store(url: str) -> Store:
    """Open a store by URL. SQLite follows SQLAlchemy's rule: ``sqlite:///runs.db`` is
    relative, ``sqlite:////var/lib/agp/runs.db`` absolute, ``sqlite://`` in memory; a bare path
    also works. ``postgresql://user@host:port/db`` needs the ``psycopg`` package."""
    if "://" not in url:
        from mesh.workflow.sqlite_store import SqliteStore
        return SqliteStore(url)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if url[len("sqlite://"):] not in ("", "/") and not url.startswith("sqlite:///"):
            raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative or sqlite:////abs")
        from mesh.workflow.sqlite_store import SqliteStore
        return SqliteStore(path or ":memory:")
    if scheme in ("postgresql", "postgres"):
        try:
            from mesh.workflow.pg_store import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"PostgreSQL stores need the psycopg package: {exc}")
        return PostgresStore(url)
    raise ConfigError(f"unknown store URL scheme {scheme!r}: use sqlite:// or postgresql://")
