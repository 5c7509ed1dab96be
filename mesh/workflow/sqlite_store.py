"""The default run store: one SQLite file in WAL mode.

Durability choice: ``journal_mode=WAL`` with ``synchronous=FULL``. WAL lets ``agp workflow
status`` read while the orchestrator writes. With WAL, ``NORMAL`` already survives a kill -9
(a committed transaction is in the WAL file, in the OS cache); ``FULL`` also fsyncs the WAL on
every commit, so a power cut or kernel crash cannot take back a step the runner already
reported as succeeded (and whose dependents may have started). The runner commits a few
times per step, not per message, so the fsync costs nothing that matters here.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from mesh.errors import Closed, ConfigError, Error, InternalError, Unavailable
from mesh.workflow.store import SqlStore

SCHEMA_VERSION: Final = 2
"""v2 added ``runs.lease_until``. A v1 file gets the column on open; a build that knows only
v1 refuses a v2 file, so no process that ignores leases drives a run beside one that keeps
them (it would take over a run whose lease it does not see, or let one lapse)."""
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT,
    owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, created);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    error TEXT,
    instance TEXT,
    avoid TEXT NOT NULL DEFAULT '[]',
    output BLOB,
    output_refs TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, name)
);
"""


class SqliteStore(SqlStore):
    """A :class:`Store` in one SQLite file (``":memory:"`` for tests and one-shot runs).

    Safe to share between the event loop and worker threads: one connection, one lock.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the SQLite store {self.path!r}: {exc}")
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"{self.path} has schema v{version}; this build knows "
                                  f"v{SCHEMA_VERSION}")
            with self._tx() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                _migrate(cur)
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, Error) as exc:
            conn.close()
            self._conn = None
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cannot use {self.path!r} as a SQLite store: {exc}")

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """One transaction; any sqlite3 error in it becomes a mesh error (see _typed), so
        callers (the cancel watcher, the runner) handle it like any other store failure."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise Closed("the workflow store is closed")
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):  # the first error matters
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _typed(exc, self.path) from exc
            finally:
                cur.close()

    def pragma(self, name: str) -> object:
        """Read one PRAGMA (tests check the journal and sync modes)."""
        if name not in ("journal_mode", "synchronous", "foreign_keys", "user_version"):
            raise ValueError(f"pragma {name!r} is not exposed")
        with self._lock:
            if self._conn is None:
                raise Closed("the workflow store is closed")
            return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _migrate(cur: sqlite3.Cursor) -> None:
    """Bring a file made by an earlier version up to :data:`SCHEMA_VERSION` (in the open's
    transaction: a failure leaves it as it was)."""
    columns = {row[1] for row in cur.execute("PRAGMA table_info(runs)").fetchall()}
    if "lease_until" not in columns:  # v1: runs had no lease
        cur.execute("ALTER TABLE runs ADD COLUMN lease_until REAL")


def _typed(exc: sqlite3.Error, path: str) -> Error:
    """A sqlite3 error as the mesh error a caller can act on: a refused change (a duplicate
    run id) is ConfigError; a misuse of the connection is a bug (InternalError); anything
    else (locked past the busy timeout, disk full, I/O, corruption) is Unavailable: the
    store may answer again later."""
    if isinstance(exc, sqlite3.IntegrityError):
        return ConfigError(f"the SQLite store {path!r} refused the change: {exc}")
    if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return InternalError(f"the SQLite store {path!r} was misused: {exc}")
    return Unavailable(f"the SQLite store {path!r} failed: {exc}")
