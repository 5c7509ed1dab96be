"""Fixtures for the workflow tests: a real SQLite store, an artifact directory, helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.workflow import ArtifactStore, Store, open_store


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (to_thread workers included)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked: {still}"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/runs.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    """The default store of the runner tests (the store tests run it on both back ends)."""
    return sqlite_store


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _postgres_bin() -> Path | None:
    """The newest PostgreSQL server bin directory on this machine, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install_postgres() -> None:
    """Install the Debian ``postgresql`` package (root only), refreshing indexes if needed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900,
                       check=True)
        subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL, for each back end: a SQLite file, a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    from .test_workflow_pg_store import fresh_schema

    with fresh_schema(request.getfixturevalue("pg_dsn")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL server: initdb in a temp dir, pg_ctl start on a free port.

    Uses the Debian ``postgresql`` package's binaries, installing the package with apt-get
    first when they are missing and we are root. The server runs as the ``postgres`` user
    when we are root (PostgreSQL refuses root), with trust auth on 127.0.0.1 only.
    """
    bindir = _postgres_bin()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_postgres()
        bindir = _postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found: apt-get install -y postgresql")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="agp-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opts = (f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off")
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db")]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U",
                        "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-l", str(data / "log"), "-w", "-t", "60", "-o", opts,
                        "start"], check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgresql_store(pg_dsn: str) -> Iterator[Store]:
    """A PostgreSQL store in a fresh schema of the session's server."""
    import psycopg

    schema = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    s = open_store(f"{pg_dsn}?options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
