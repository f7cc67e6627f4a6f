"""PostgreSQL, for several bot processes sharing one database: a psycopg 3 connection pool, and what PostgreSQL does
its own way.

The statements both databases share are in `bot.storage.sql` (written with `?`, run here as `%s`). The processes
claim their background work with leases set by the database's clock and `FOR UPDATE SKIP LOCKED`, count the
provider's slots under an advisory lock, and reservations lock per server."""

from __future__ import annotations

import contextlib
import graphlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bot.core.model import DuplicateRequest, Job, Lease, Usage
from bot.storage.schema import RUNNING_TOTALS, migrations
from bot.storage.sql import IN_PROGRESS_SQL, JOB_COLUMNS, StoreUnavailable
from bot.storage.sql_jobs import SqlStore
from bot.storage.sqlite import MIGRATIONS, Store

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]

# The same steps as SQLite's, same numbers (bot.storage.schema), in this dialect.
PG_MIGRATIONS = migrations("postgres")

# PostgreSQL has no PRAGMA user_version: the version lives in a one-row table made before any migration.
_SCHEMA_VERSION = """
    CREATE TABLE IF NOT EXISTS schema_version (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        version INTEGER NOT NULL
    );
    INSERT INTO schema_version (one, version) VALUES (TRUE, 0) ON CONFLICT (one) DO NOTHING;
"""

# Advisory lock keys are namespaced text hashed by the server, so they cannot collide with plain numbers.
_MIGRATE_LOCK = "kling-bot:migrate"


# Leases are set and compared with the database's clock, never a process's: one whose clock ran ahead would see
# live claims as expired and take work another process is doing. (`now` passed by callers is their own clock.)
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
# A lease is free when released (no owner) or run out in the database's terms.
_LEASE_FREE = f"(lease_owner IS NULL OR lease_until IS NULL OR lease_until <= {DB_NOW})"

_BOOLEAN = frozenset({"cancel_requested", "sound_dropped", "private", "undelivered_told"})
# This database's bookkeeping, not the store's data (SQLite keeps its version in PRAGMA user_version).
_BOOKKEEPING = frozenset({"schema_version"})
# The old process is gone: its claims end now, so the new fleet takes the jobs at once. The owner stays, as when a
# bot starts on SQLite: it is the sign that the process stopped in the middle of the work (a post may exist).
_VOID_CLAIMS = "UPDATE jobs SET lease_until = 0 WHERE lease_owner IS NOT NULL"


def _parents_first(references: dict[str, set[str]]) -> list[str]:
    """Tables in an order that inserts each after the tables its foreign keys point to."""
    return list(graphlib.TopologicalSorter({t: refs & references.keys() - {t} for t, refs in references.items()})
                .static_order())  # fmt: skip


async def _sqlite_tables(sqlite: aiosqlite.Connection) -> list[str]:
    """The tables of a SQLite store, read from its schema, parents first; the running totals are left out."""
    references: dict[str, set[str]] = {}
    async with sqlite.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'") as c:
        names = [str(row[0]) for row in await c.fetchall() if row[0] not in RUNNING_TOTALS]
    for name in names:
        async with sqlite.execute('SELECT "table" FROM pragma_foreign_key_list(?)', (name,)) as cursor:
            references[name] = {str(row[0]) for row in await cursor.fetchall()}
    return _parents_first(references)


async def _pg_tables(db: Connection) -> list[str]:
    """The store's tables in this PostgreSQL schema, read from its catalog, parents first."""
    cursor = await db.execute(
        "SELECT c.relname, r.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
        " LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'f'"
        " LEFT JOIN pg_class r ON r.oid = k.confrelid"
        " WHERE c.relkind IN ('r', 'p')"
    )
    references: dict[str, set[str]] = {}
    for table, parent in await cursor.fetchall():
        if table not in _BOOKKEEPING:
            references.setdefault(table, set()).update({parent} if parent else set())
    return _parents_first(references)


def _describe(dsn: str) -> str:
    """Where a DSN points, for messages, without its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database (unparsable DSN)"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql database {parts.get('dbname') or '(default)'} on {host}{port}"


class PgStore(SqlStore):
    """A psycopg connection pool; each write is its own transaction, and reservations lock their server."""

    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"  # processes claiming at once pass over each other's rows: disjoint claims
    NULL_SAFE_EQUALS = "IS NOT DISTINCT FROM"
    CREATED_DAY = "CAST(FLOOR(created_at / 86400) AS BIGINT)"  # a plain CAST would round to the nearest day

    def __init__(self, pool: AsyncConnectionPool[Connection], where: str) -> None:
        self._pool = pool
        self._where = where

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 10) -> PgStore:
        """Connect to the database and bring its schema up to date; every failure is a `StoreUnavailable`.

        Several bot processes may open the same database: they share the background work through claims."""
        where = _describe(dsn)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_size, kwargs={"autocommit": True}, open=False, name="kling-bot"
        )
        try:
            # One direct connection first: a wrong DSN fails at once with libpq's reason, where the pool would retry
            # until its timeout and say only that it timed out.
            probe = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
            await probe.close()
            await pool.open(wait=True, timeout=10.0)
            store = cls(pool, where)
            await store._migrate()
        except BaseException as exc:
            await pool.close()
            reason = " ".join(str(exc).split()) or type(exc).__name__  # libpq's reasons span lines; ours is one
            if isinstance(exc, PoolTimeout | psycopg.OperationalError):
                raise StoreUnavailable(f"cannot open {where}: {reason}") from None
            if isinstance(exc, psycopg.Error):
                raise StoreUnavailable(f"cannot use {where}: {reason}") from None
            raise
        return store

    async def close(self) -> None:
        """Close every connection."""
        await self._pool.close()

    async def _migrate(self) -> None:
        async with self.transaction() as db:
            # The lock makes two processes starting at once take turns instead of both creating the table.
            await db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_MIGRATE_LOCK,))
            await db.execute(_SCHEMA_VERSION)
        while True:
            async with self.transaction() as db:
                await db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_MIGRATE_LOCK,))
                version = int(await self._scalar("SELECT version FROM schema_version", db=db))
                if version > len(PG_MIGRATIONS):
                    raise RuntimeError(f"database schema {version} is newer than this bot ({len(PG_MIGRATIONS)})")
                if version == len(PG_MIGRATIONS):
                    return
                # One migration and its version bump per transaction: PostgreSQL DDL is transactional.
                await db.execute(PG_MIGRATIONS[version])
                await db.execute("UPDATE schema_version SET version = %s", (version + 1,))
            log.info("database schema upgraded to version %d", version + 1)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A write transaction on a connection of the pool; committed on success, rolled back on error."""
        async with self._pool.connection() as db, db.transaction():
            yield db

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return int(await self._scalar("SELECT version FROM schema_version"))

    # --- the hooks of bot.storage.sql ------------------------------------------------------------------

    async def _fetch(self, db: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cursor = await db.execute(sql.replace("?", "%s"), params)
        return await cursor.fetchall() if cursor.description else []

    async def _run(self, db: Connection, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await db.execute(sql.replace("?", "%s"), params)
        return cursor.rowcount

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._pool.connection() as db:
            return await self._fetch(db, sql, params)

    def _lease_until(self, now: float, seconds: float) -> tuple[str, float]:
        return f"{DB_NOW} + ?", seconds

    def _lease_free(self, now: float) -> tuple[str, list[Any]]:
        return _LEASE_FREE, []

    def _lease_now(self, now: float) -> tuple[str, list[Any]]:
        return DB_NOW, []

    def _unclaimed_since(self, read: Sequence[tuple[str, int]]) -> tuple[str, list[Any]]:
        return "(id, lease_attempt) IN (SELECT * FROM unnest(?::text[], ?::int[]))", [
            [job_id for job_id, _ in read],
            [attempt for _, attempt in read],
        ]

    def _any(self, column: str, values: Sequence[Any], kind: str) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::{kind}[])", [list(values)]

    async def _advisory_lock(self, db: Connection, key: str) -> None:
        # Released at commit or rollback; READ COMMITTED alone would let two processes count the same room.
        await db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    def _param(self, name: str, value: Any) -> Any:
        # SQLite callers pass 0/1 for flags; PostgreSQL has no implicit integer-to-boolean cast.
        return bool(value) if name in _BOOLEAN and value is not None else value

    def _set_mark(self, name: str, changes: dict[str, Any]) -> str:
        # A write that ends a claim stamps the database's time (later claims go to the jobs worked on least recently).
        released = "lease_owner" in changes and changes["lease_owner"] is None
        return DB_NOW if released and name == "lease_until" else "?"

    async def insert_job(self, db: Connection, job: Job) -> None:
        """Write a new job inside a transaction the caller holds (the quota check shares it). A new job's claim
        (its command's) lasts as long as the process asked, from the database's clock."""
        marks = {name: "%s" for name in JOB_COLUMNS}
        values = [self._param(name, getattr(job, name)) for name in JOB_COLUMNS]
        if job.lease_owner is not None and job.lease_until is not None:
            marks["lease_until"] = f"{DB_NOW} + %s"
            values[JOB_COLUMNS.index("lease_until")] = job.lease_until - job.created_at
        placeholders = ", ".join(marks.values())
        try:
            await db.execute(f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({placeholders})", values)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "jobs_request_key":  # the question was answered already: rolled back
                raise DuplicateRequest(job.request_key) from None
            raise

    async def release_leases(self, held: Sequence[tuple[str, Lease]], now: float) -> None:
        """Give back finished claims (job id, lease); one claimed again since is left alone. The release is stamped
        with the database's time (`now`, the process's clock, is SQLite's)."""
        if not held:
            return
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE jobs SET lease_owner = NULL, lease_until = {DB_NOW}"
                " FROM unnest(%s::text[], %s::text[], %s::int[]) AS held (id, owner, attempt)"
                " WHERE jobs.id = held.id AND jobs.lease_owner = held.owner AND jobs.lease_attempt = held.attempt",
                ([j for j, _ in held], [lease.owner for _, lease in held], [lease.attempt for _, lease in held]),
            )

    # --- counts: PostgreSQL counts the rows (its indexes serve them; SQLite keeps running totals) -------------

    async def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each state (an index scan: call it now and then, not per job)."""
        return {row[0]: int(row[1]) for row in await self._read("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    async def credits_used(self, guild_id: int, since: float) -> int:
        """Credits a server's members used or hold since a time."""
        sql = (
            "SELECT COALESCE(SUM(COALESCE(cost_billed, cost_estimate)), 0) FROM jobs"
            " WHERE guild_id = ? AND created_at >= ? AND status NOT IN ('failed', 'cancelled')"
        )
        return int(await self._scalar(sql, (guild_id, since)))

    async def count_member_jobs(self, guild_id: int, user_id: int) -> int:
        """How many jobs a member has in one server."""
        return int(
            await self._scalar("SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
        )

    async def _usage(self, db: Connection | None, guild_id: int, user_id: int, since: float) -> Usage:
        # Failed and cancelled jobs release their credits simply by not being counted.
        used, reserved = await self._used_since(db, guild_id, user_id, since)
        granted = await self._granted(db, guild_id, user_id, since)
        in_flight = await self._scalar(
            f"SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND user_id = ? AND status IN ({IN_PROGRESS_SQL})",
            (guild_id, user_id),
            db,
        )
        # SUM over BIGINT is NUMERIC in PostgreSQL (a Decimal here): the rows carry plain ints.
        return Usage(int(used), int(reserved), granted, int(in_flight or 0))

    async def _server_in_flight(self, db: Connection, guild_id: int) -> int:
        sql = f"SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND status IN ({IN_PROGRESS_SQL})"
        return int(await self._scalar(sql, (guild_id,), db) or 0)

    # --- maintenance ------------------------------------------------------------------------------------

    async def backup(self, target: Path | str) -> None:
        """A consistent copy of every row into a new SQLite file at `target`, which `Store.open` reads.

        One REPEATABLE READ snapshot, so it is safe while bots run. (`pg_dump` is the tool for a PostgreSQL copy.)"""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        copy = await Store.open(partial)
        try:
            async with self._pool.connection() as db:
                await db.set_autocommit(False)
                try:
                    await db.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                    await db.set_read_only(True)
                    async with db.transaction(), copy.transaction() as out:
                        for table in await _pg_tables(db):
                            cursor = await db.execute(f"SELECT * FROM {table}")
                            names = [column.name for column in cursor.description or ()]
                            marks = ", ".join("?" for _ in names)
                            sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})"
                            while rows := await cursor.fetchmany(500):
                                await out.executemany(sql, rows)
                finally:
                    # The pool hands this connection out again: give it back as it was lent.
                    await db.set_read_only(None)
                    await db.set_isolation_level(None)
                    await db.set_autocommit(True)
        except BaseException:
            await copy.close()
            partial.unlink(missing_ok=True)
            raise
        await copy.close()
        os.replace(partial, target)

    async def copy_from_sqlite(self, source: Path | str) -> dict[str, int]:
        """Copy every table of a SQLite database of this schema into this one, which must hold no jobs yet, in one
        transaction (an operator moving to PostgreSQL keeps their history, quotas and members' choices). The tables
        come from the source's schema, so a table this copy does not know is copied too, or refused if PostgreSQL
        has no twin of it. The old process's claims end in the copy. Returns rows per table."""
        async with aiosqlite.connect(f"file:{Path(source)}?mode=ro", uri=True) as sqlite:
            async with sqlite.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            if row is None or row[0] != len(MIGRATIONS):
                found = row[0] if row else "no"
                raise StoreUnavailable(f"{source} is at schema {found}; open it with the bot once to upgrade it")
            tables = await _sqlite_tables(sqlite)
            copied = {}
            async with self.transaction() as db:
                counted = await db.execute("SELECT COUNT(*) FROM jobs")
                if (await counted.fetchone() or (0,))[0]:
                    raise StoreUnavailable("the PostgreSQL database already holds jobs; copy into an empty one")
                missing = sorted(set(tables) - set(await _pg_tables(db)))
                if missing:
                    raise StoreUnavailable(f"PostgreSQL has no table for {', '.join(missing)}; nothing was copied")
                flags = await _boolean_columns(db)
                for table in tables:
                    async with sqlite.execute(f"SELECT * FROM {table}") as rows:
                        names = [column[0] for column in rows.description]
                        flag = [(table, name) in flags for name in names]
                        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('%s' for _ in names)})"
                        copied[table] = 0
                        while batch := list(await rows.fetchmany(500)):
                            # SQLite keeps flags as 0/1; PostgreSQL wants booleans.
                            values = [[bool(v) if f and v is not None else v for v, f in zip(r, flag, strict=True)]
                                      for r in batch]  # fmt: skip
                            async with db.cursor() as out:
                                await out.executemany(sql, values)
                            copied[table] += len(batch)
                identities = await db.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND is_identity = 'YES'"
                )
                for table, column in await identities.fetchall():  # the next id continues after the copied ones
                    await db.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                        f" COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
                    )
                await db.execute(_VOID_CLAIMS)
        return copied


async def _boolean_columns(db: Connection) -> set[tuple[str, str]]:
    """(table, column) of every boolean column of the store's schema."""
    cursor = await db.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND data_type = 'boolean'"
    )
    return {(str(table), str(column)) for table, column in await cursor.fetchall()}
