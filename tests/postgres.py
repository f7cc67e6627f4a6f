"""A throwaway PostgreSQL server for the tests: one per session (from the `pgserver` wheel), one database per test.

Where the server cannot start, the PostgreSQL tests skip with the reason; under CI (CI=true) they fail instead,
so a broken install cannot pass as green."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_databases = itertools.count(1)


class PostgresServer:
    """A running server; `dsn(name)` points at one of its databases."""

    def __init__(self, handle: Any, folder: Path) -> None:
        self._handle = handle
        self.folder = folder

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI for a database of this server (a Unix socket in its temp folder, no TCP port)."""
        return str(self._handle.get_uri(database))

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(sql)

    def stop(self) -> None:
        """Stop the server and delete its files."""
        try:
            self._handle.cleanup()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_server() -> PostgresServer:
    """Start a server in a new temp folder; raises with the cause when this machine cannot run one.

    As root, pgserver itself creates a system user `pgserver` (useradd) and runs initdb and postgres as that
    user, since PostgreSQL refuses to run as root; it opens the temp folder's parents for that user to traverse."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as under CI) and falls back to /tmp: that is fine.
        warnings.simplefilter("ignore")
        import pgserver

    folder = Path(tempfile.mkdtemp(prefix="kling-pg-"))
    try:
        handle = pgserver.get_server(folder / "data", cleanup_mode="delete")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    server = PostgresServer(handle, folder)
    try:
        # A throwaway server needs no durability; without fsync each CREATE DATABASE takes a tenth of the time.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            server.admin(f"ALTER SYSTEM SET {setting} = off")
        server.admin("SELECT pg_reload_conf()")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session."""
    try:
        server = start_server()
    except Exception as exc:
        reason = f"cannot start a throwaway PostgreSQL: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    name = f"test_{os.getpid()}_{next(_databases)}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.dsn(name)
    finally:
        with contextlib.suppress(Exception):
            postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
