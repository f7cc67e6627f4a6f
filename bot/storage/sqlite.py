"""SQLite, the embedded default for one process: the connections, the migrations, and what SQLite does its own way.

The statements both databases share are in `bot.storage.sql`. Writes go through one connection, serialised by a lock,
each in a `BEGIN IMMEDIATE` transaction; reads made outside a transaction go through a second, read-only
connection, so in WAL mode a `/quota` does not queue behind a burst's writes (a reader sees every commit made before
it starts). `:memory:` databases have one connection, for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bot.core.model import (
    OPEN,
    AuditEntry,
    DuplicateRequest,
    Job,
    Lease,
    MemberQuota,
    QuotaSettings,
    Usage,
)
from bot.storage.schema import RUNNING_TOTALS, migrations
from bot.storage.sql import (
    IN_PROGRESS_SQL,
    JOB_COLUMNS,
    SETTLED_SQL,
    DecisionT,
    StoreUnavailable,
    checked_update,
    literals,
)
from bot.storage.sql_jobs import SqlStore

# What other modules and the tests import from here.
__all__ = [
    "JOB_COLUMNS",
    "MIGRATIONS",
    "RUNNING_TOTALS",
    "AuditEntry",
    "DecisionT",
    "Job",
    "MemberQuota",
    "QuotaSettings",
    "Store",
    "StoreUnavailable",
    "Usage",
    "checked_update",
]

log = logging.getLogger(__name__)

# Each entry upgrades the schema by one version (PRAGMA user_version); the steps are in bot.storage.schema.
MIGRATIONS = migrations("sqlite")


def _hold_instance_lock(path: Path) -> int:
    """Take the database's process lock (`<database>.lock`) or refuse: SQLite serves one bot process."""
    lock_path = path.with_name(path.name + ".lock")
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StoreUnavailable(
            f"another bot process is running on {path}; SQLite serves one process (stop the other one first)"
        ) from None
    return handle


class Store(SqlStore):
    """A writer connection and a reader connection in WAL mode; writes are serialised by a lock."""

    OPEN_JOBS_INDEX = " INDEXED BY jobs_member_unsettled"
    CREATED_DAY = "CAST(created_at / 86400 AS INTEGER)"  # truncation is rounding down: no job predates 1970

    def __init__(
        self, db: aiosqlite.Connection, instance_lock: int | None = None, reader: aiosqlite.Connection | None = None
    ) -> None:
        self._db = db
        self._reader = reader or db
        self._lock = asyncio.Lock()
        self._instance_lock = instance_lock

    @classmethod
    async def open(cls, path: Path | str, *, single_instance: bool = False) -> Store:
        """Open (creating if needed) the database and bring its schema up to date.

        With `single_instance`, refuse when another process holds the database (the bot itself, not its tools).
        Every failure is a `StoreUnavailable` naming the cause."""
        instance_lock = None
        try:
            if str(path) != ":memory:":
                path = Path(path)
                if path.is_dir():
                    raise StoreUnavailable(f"{path} is a directory, not a database file")
                path.parent.mkdir(parents=True, exist_ok=True)
                if single_instance:
                    instance_lock = _hold_instance_lock(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from None
        reader = None
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA synchronous=NORMAL")
            store = cls(db, instance_lock)
            await store._migrate()
            if instance_lock is not None:
                # The bot holds the file alone: claims left by an earlier process are void (it is gone), yet still
                # show that it stopped in the middle of their work (a post may have reached Discord).
                await db.execute(
                    f"UPDATE jobs SET lease_until = 0 WHERE status IN ({literals(OPEN)}) AND lease_owner IS NOT NULL"
                )
            await db.execute("BEGIN IMMEDIATE")  # a read-only file or folder fails here, at start, not at a job
            await db.execute("ROLLBACK")
            if str(path) != ":memory:":  # a second connection to :memory: would be another, empty database
                reader = await aiosqlite.connect(path, isolation_level=None)
                await reader.execute("PRAGMA query_only=ON")
                await reader.execute("PRAGMA busy_timeout=5000")
                store._reader = reader
        except sqlite3.Error as exc:
            await _close_all(db, reader, instance_lock)
            raise StoreUnavailable(f"cannot use {path}: {exc}") from None
        except BaseException:
            await _close_all(db, reader, instance_lock)
            raise
        return store

    async def close(self) -> None:
        """Close the connections (checkpointing the WAL) and let another process have the database."""
        if self._reader is not self._db:
            await self._reader.close()
        await self._db.close()
        if self._instance_lock is not None:
            os.close(self._instance_lock)
            self._instance_lock = None

    async def _migrate(self) -> None:
        version = int(await self._scalar("PRAGMA user_version", db=self._db))
        if version > len(MIGRATIONS):
            raise RuntimeError(f"database schema {version} is newer than this bot ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first, so wrap the script and the version bump in one transaction ourselves.
            await self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            log.info("database schema upgraded to version %d", number)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction; coroutines sharing the connection wait their turn instead of interleaving."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    # --- the hooks of bot.storage.sql ------------------------------------------------------------------

    async def _fetch(self, db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _run(self, db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> int:
        async with db.execute(sql, params) as cursor:
            return cursor.rowcount

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # The reader connection: it does not wait for the writer's transaction (WAL keeps readers beside it).
        return await self._fetch(self._reader, sql, params)

    # Leases here are times of `now`, the process's clock: SQLite serves one process, so there is one clock.
    def _lease_until(self, now: float, seconds: float) -> tuple[str, float]:
        return "?", now + seconds

    def _lease_free(self, now: float) -> tuple[str, list[Any]]:
        return "(lease_until IS NULL OR lease_until <= ?)", [now]

    def _lease_now(self, now: float) -> tuple[str, list[Any]]:
        return "?", [now]

    def _unclaimed_since(self, read: Sequence[tuple[str, int]]) -> tuple[str, list[Any]]:
        # One JSON object (id -> attempt), as `_any`'s list: its keys and values are read without taking apart pairs.
        return "(id, lease_attempt) IN (SELECT key, value FROM json_each(?))", [json.dumps(dict(read))]

    def _any(self, column: str, values: Sequence[Any], kind: str) -> tuple[str, list[Any]]:
        # One JSON parameter, however many values (SQLite caps the number of parameters).
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(values))]

    async def insert_job(self, db: aiosqlite.Connection, job: Job) -> None:
        """Write a new job inside a transaction the caller holds (the quota check shares it)."""
        placeholders = ", ".join("?" for _ in JOB_COLUMNS)
        values = tuple(getattr(job, name) for name in JOB_COLUMNS)
        try:
            await db.execute(f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({placeholders})", values)
        except sqlite3.IntegrityError as exc:
            if "jobs.request_key" in str(exc):  # the question was answered already: the caller rolls back
                raise DuplicateRequest(job.request_key) from None
            raise

    async def release_leases(self, held: Sequence[tuple[str, Lease]], now: float) -> None:
        """Give back finished claims (job id, lease); one claimed again since is left alone. The release time
        stays, so the next claims go to the jobs worked on least recently."""
        if not held:
            return
        attempts: dict[str, dict[str, int]] = {}  # owner -> job id -> attempt (a process releases only its own)
        for job_id, lease in held:
            attempts.setdefault(lease.owner, {})[job_id] = lease.attempt
        async with self.transaction() as db:
            # One statement for the whole tick (10,000 claims), not one per job: the claims as one JSON object, whose
            # keys and values SQLite reads without taking each element apart.
            for owner, claims in attempts.items():
                await db.execute(
                    "UPDATE jobs SET lease_owner = NULL, lease_until = ?"
                    " FROM (SELECT key AS id, value AS attempt FROM json_each(?)) AS held"
                    " WHERE jobs.id = held.id AND jobs.lease_owner = ? AND jobs.lease_attempt = held.attempt",
                    (now, json.dumps(claims), owner),
                )

    # --- counts, from the running totals (migration 5) ----------------------------------------------------

    async def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each state (from the running totals)."""
        rows = await self._read("SELECT status, jobs FROM job_totals WHERE jobs > 0 ORDER BY status")
        return {row[0]: int(row[1]) for row in rows}

    async def credits_used(self, guild_id: int, since: float) -> int:
        """Credits a server's members used or hold since a time."""
        rows = await self._read(
            "SELECT MIN(first_created), COALESCE(SUM(settled), 0) FROM guild_job_totals"
            " WHERE guild_id = ? AND status NOT IN ('failed', 'cancelled')",
            (guild_id,),
        )
        first, total = rows[0] if rows else (None, 0)
        if first is None or since <= first:  # the window holds all the server's jobs: the totals answer
            return int(total)
        return int(
            await self._scalar(
                "SELECT COALESCE(SUM(COALESCE(cost_billed, cost_estimate)), 0) FROM jobs"
                " WHERE guild_id = ? AND created_at >= ? AND status NOT IN ('failed', 'cancelled')",
                (guild_id, since),
            )
        )

    async def count_member_jobs(self, guild_id: int, user_id: int) -> int:
        """How many jobs a member has in one server."""
        sql = "SELECT COALESCE(SUM(jobs), 0) FROM member_job_totals WHERE guild_id = ? AND user_id = ?"
        return int(await self._scalar(sql, (guild_id, user_id)))

    async def _usage(self, db: aiosqlite.Connection | None, guild_id: int, user_id: int, since: float) -> Usage:
        # Failed and cancelled jobs release their credits simply by not being counted.
        rows = await self._select(
            db,
            "SELECT MIN(first_created),"
            f" COALESCE(SUM(CASE WHEN status IN ({SETTLED_SQL}) THEN settled END), 0),"
            f" COALESCE(SUM(CASE WHEN status IN ({IN_PROGRESS_SQL}) THEN estimated END), 0),"
            f" COALESCE(SUM(CASE WHEN status IN ({IN_PROGRESS_SQL}) THEN jobs END), 0)"
            " FROM member_job_totals WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        first, used, reserved, in_flight = rows[0] if rows else (None, 0, 0, 0)
        if first is not None and since > first:  # a window of part of their history: the index's range of it
            used, reserved = await self._used_since(db, guild_id, user_id, since)
        granted = await self._granted(db, guild_id, user_id, since)
        return Usage(int(used), int(reserved), granted, int(in_flight))

    async def _server_in_flight(self, db: aiosqlite.Connection, guild_id: int) -> int:
        sql = (
            f"SELECT COALESCE(SUM(jobs), 0) FROM guild_job_totals WHERE guild_id = ? AND status IN ({IN_PROGRESS_SQL})"
        )
        return int(await self._scalar(sql, (guild_id,), db) or 0)

    # --- maintenance ------------------------------------------------------------------------------------

    async def backup(self, target: Path | str) -> None:
        """A consistent online copy of the database (SQLite's backup API), safe while the bot runs."""
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        async with self._lock:
            destination = await aiosqlite.connect(target)
            try:
                await self._db.backup(destination)
            finally:
                await destination.close()


async def _close_all(db: aiosqlite.Connection, reader: aiosqlite.Connection | None, instance_lock: int | None) -> None:
    """Undo a failed open."""
    if reader is not None:
        await reader.close()
    await db.close()
    if instance_lock is not None:
        os.close(instance_lock)
