"""The run store on PostgreSQL (psycopg 3), for orchestrators that share one database.

Same tables and SQL as the SQLite store (see :class:`~mesh.workflow.store.SqlStore`); each
:meth:`apply` is one PostgreSQL transaction, so a kill -9 of the orchestrator leaves only
whole changes. A dropped connection is reopened on the next call; the call that saw it fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg

from mesh.errors import Closed, ConfigError, InternalError, Unavailable
from mesh.workflow.store import SqlStore

SCHEMA_LOCK_KEY: Final = 0x61677077  # "agpw": serialises concurrent schema creation
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        error TEXT,
        owner TEXT,
        lease_until DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, created)",
    "CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created)",
    """CREATE TABLE IF NOT EXISTS steps (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
        attempt INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        started DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        error TEXT,
        instance TEXT,
        avoid TEXT NOT NULL DEFAULT '[]',
        output BYTEA,
        output_refs TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (run_id, name)
    )""",
)


class PostgresStore(SqlStore):
    """A :class:`Store` in PostgreSQL, from a DSN like ``postgresql://user@host:5432/db``."""

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for statement in _SCHEMA:
                cur.execute(statement)
            _migrate(cur)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise Closed("the workflow store is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self._dsn, autocommit=True,
                                             connect_timeout=max(1, int(self._timeout)))
            except psycopg.OperationalError as exc:
                raise Unavailable(f"cannot connect to PostgreSQL: {_first_line(exc)}")
            except psycopg.ProgrammingError as exc:
                raise ConfigError(f"bad PostgreSQL DSN: {_first_line(exc)}")
        return self._conn

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.IntegrityError as exc:
                raise ConfigError(f"PostgreSQL store refused the change: {_first_line(exc)}")
            except (psycopg.OperationalError, psycopg.InterfaceError,
                    psycopg.InternalError) as exc:
                raise Unavailable(f"PostgreSQL store: {_first_line(exc)}")
            except psycopg.Error as exc:  # bad SQL or data: a bug here, not the server's
                raise InternalError(f"PostgreSQL store: {_first_line(exc)}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _migrate(cur: psycopg.Cursor[Any]) -> None:
    """Bring tables made by an earlier version up to date, under the schema lock. Checked
    first: ALTER TABLE would lock out every other orchestrator's queries even when it has
    nothing to do."""
    cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema ="
                " current_schema() AND table_name = 'runs' AND column_name = 'lease_until'")
    if cur.fetchone() is None:  # made before leases
        cur.execute("ALTER TABLE runs ADD COLUMN lease_until DOUBLE PRECISION")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
