"""The only module that speaks SQL: migrations, jobs, first-frame images, quotas and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from bot.core.model import (
    AT_PROVIDER,
    HOLDING_A_SLOT,
    IN_PROGRESS,
    MUTABLE_JOB_FIELDS,
    OPEN,
    AuditEntry,
    DuplicateRequest,
    InFlight,
    Job,
    Lease,
    MemberQuota,
    QuotaFacts,
    QuotaSettings,
    StoredImage,
    Usage,
    UsageRow,
)

log = logging.getLogger(__name__)

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        mime TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,                 -- ours; sent to the provider as options.external_task_id
        guild_id INTEGER,                    -- NULL for jobs made from the command line
        channel_id INTEGER,
        user_id INTEGER,
        kind TEXT NOT NULL CHECK (kind IN ('text', 'image')),
        prompt TEXT NOT NULL,
        duration INTEGER NOT NULL,
        resolution TEXT NOT NULL,
        aspect_ratio TEXT,
        image_sha256 TEXT REFERENCES images (sha256),
        image_url TEXT,                      -- a first frame given as a URL instead of bytes
        image_source TEXT,                   -- where the first frame came from, for people
        status TEXT NOT NULL,
        provider_task_id TEXT,
        provider_status TEXT,
        error TEXT,
        video_url TEXT,
        video_seconds REAL,
        billed_amount TEXT,                  -- the provider's decimal string
        cost_estimate INTEGER NOT NULL DEFAULT 0,   -- milli-credits reserved
        cost_billed INTEGER,                 -- milli-credits settled from billing
        attachment_size_limit INTEGER,
        message_id INTEGER,                  -- the public message the thread hangs on
        thread_id INTEGER,
        status_message_id INTEGER,
        result_message_id INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,          -- submits tried
        delivery_attempts INTEGER NOT NULL DEFAULT 0, -- posts or downloads tried
        created_at REAL NOT NULL,
        submitted_at REAL,
        finished_at REAL,
        delivered_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_open ON jobs (status, updated_at)
        WHERE status IN ('reserved', 'queued', 'submitted', 'processing', 'succeeded');
    CREATE INDEX jobs_member ON jobs (guild_id, user_id, created_at);
    CREATE INDEX jobs_finished ON jobs (duration, resolution, finished_at) WHERE status = 'delivered';
    CREATE UNIQUE INDEX jobs_provider ON jobs (provider_task_id) WHERE provider_task_id IS NOT NULL;
    """,
    """
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        default_limit INTEGER NOT NULL,          -- milli-credits per period
        period TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
        member_in_flight INTEGER NOT NULL,
        server_in_flight INTEGER NOT NULL,
        log_channel_id INTEGER
    );
    CREATE TABLE member_quotas (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        override INTEGER,                        -- milli-credits; NULL: the roles or the default decide
        blocked_reason TEXT,                     -- set: the member may start nothing
        PRIMARY KEY (guild_id, user_id)
    );
    CREATE TABLE role_quotas (
        guild_id INTEGER NOT NULL,
        role_id INTEGER NOT NULL,
        quota INTEGER,                           -- milli-credits; NULL: unlimited
        PRIMARY KEY (guild_id, role_id)
    );
    CREATE TABLE grants (
        id INTEGER PRIMARY KEY,
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        reason TEXT NOT NULL,
        moderator_id INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX grants_member ON grants (guild_id, user_id, created_at);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        guild_id INTEGER NOT NULL,
        moderator_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        target_id INTEGER,
        before TEXT,
        after TEXT,
        reason TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX audit_guild ON audit_log (guild_id, target_id, created_at);
    CREATE INDEX jobs_guild_open ON jobs (guild_id, status)
        WHERE status IN ('reserved', 'queued', 'submitted', 'processing', 'succeeded');
    """,
    """
    -- A member's jobs in flight, counted at every reservation, without walking their whole history.
    CREATE INDEX jobs_member_open ON jobs (guild_id, user_id, status)
        WHERE status IN ('reserved', 'queued', 'submitted', 'processing');
    -- Finding the jobs to poll: its query binds the states as parameters, which no partial index can serve.
    DROP INDEX jobs_open;
    CREATE INDEX jobs_status ON jobs (status, created_at);
    """,
    """
    -- Who made the job: the bot ('discord') or `python -m bot generate` ('cli'); each only runs its own.
    ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT 'discord';
    -- A public URL of the same first frame, for a gateway that refuses Base64.
    ALTER TABLE jobs ADD COLUMN frame_url TEXT;
    -- A submit whose answer was lost: since when, and how many look-ups by external id have not found it.
    ALTER TABLE jobs ADD COLUMN uncertain_since REAL;
    ALTER TABLE jobs ADD COLUMN lookups INTEGER NOT NULL DEFAULT 0;
    -- The member cancelled a job whose submit is uncertain: it is not sent again.
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- Running totals of jobs per state: per member, per server and overall, kept by triggers inside the writing
    -- transaction, so quotas, caps, counts and metrics read a few rows instead of walking years of history.
    -- `estimated` sums cost_estimate, `settled` sums COALESCE(cost_billed, cost_estimate); `first_created` is at
    -- or before every counted job's created_at, so the totals answer any window that starts at or before it.
    CREATE TABLE member_job_totals (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        jobs INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        settled INTEGER NOT NULL,
        first_created REAL NOT NULL,
        PRIMARY KEY (guild_id, user_id, status)
    ) WITHOUT ROWID;
    CREATE TABLE guild_job_totals (
        guild_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        jobs INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        settled INTEGER NOT NULL,
        first_created REAL NOT NULL,
        PRIMARY KEY (guild_id, status)
    ) WITHOUT ROWID;
    CREATE TABLE job_totals (status TEXT PRIMARY KEY, jobs INTEGER NOT NULL) WITHOUT ROWID;

    INSERT INTO member_job_totals
        SELECT guild_id, user_id, status, COUNT(*), SUM(cost_estimate), SUM(COALESCE(cost_billed, cost_estimate)),
            MIN(created_at)
        FROM jobs WHERE guild_id IS NOT NULL AND user_id IS NOT NULL GROUP BY guild_id, user_id, status;
    INSERT INTO guild_job_totals
        SELECT guild_id, status, COUNT(*), SUM(cost_estimate), SUM(COALESCE(cost_billed, cost_estimate)),
            MIN(created_at)
        FROM jobs WHERE guild_id IS NOT NULL GROUP BY guild_id, status;
    INSERT INTO job_totals SELECT status, COUNT(*) FROM jobs GROUP BY status;

    CREATE TRIGGER jobs_totals_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO member_job_totals
            SELECT NEW.guild_id, NEW.user_id, NEW.status, 1, NEW.cost_estimate,
                COALESCE(NEW.cost_billed, NEW.cost_estimate), NEW.created_at
            WHERE NEW.guild_id IS NOT NULL AND NEW.user_id IS NOT NULL
            ON CONFLICT (guild_id, user_id, status) DO UPDATE SET jobs = jobs + 1,
                estimated = estimated + excluded.estimated, settled = settled + excluded.settled,
                first_created = MIN(first_created, excluded.first_created);
        INSERT INTO guild_job_totals
            SELECT NEW.guild_id, NEW.status, 1, NEW.cost_estimate, COALESCE(NEW.cost_billed, NEW.cost_estimate),
                NEW.created_at
            WHERE NEW.guild_id IS NOT NULL
            ON CONFLICT (guild_id, status) DO UPDATE SET jobs = jobs + 1,
                estimated = estimated + excluded.estimated, settled = settled + excluded.settled,
                first_created = MIN(first_created, excluded.first_created);
        INSERT INTO job_totals VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET jobs = jobs + 1;
    END;
    CREATE TRIGGER jobs_totals_delete AFTER DELETE ON jobs BEGIN
        UPDATE member_job_totals SET jobs = jobs - 1, estimated = estimated - OLD.cost_estimate,
            settled = settled - COALESCE(OLD.cost_billed, OLD.cost_estimate)
            WHERE guild_id = OLD.guild_id AND user_id = OLD.user_id AND status = OLD.status;
        UPDATE guild_job_totals SET jobs = jobs - 1, estimated = estimated - OLD.cost_estimate,
            settled = settled - COALESCE(OLD.cost_billed, OLD.cost_estimate)
            WHERE guild_id = OLD.guild_id AND status = OLD.status;
        UPDATE job_totals SET jobs = jobs - 1 WHERE status = OLD.status;
    END;
    -- An update takes the old row out and puts the new one in (the same statements as the two triggers above).
    CREATE TRIGGER jobs_totals_update
    AFTER UPDATE OF status, cost_estimate, cost_billed, guild_id, user_id, created_at ON jobs BEGIN
        UPDATE member_job_totals SET jobs = jobs - 1, estimated = estimated - OLD.cost_estimate,
            settled = settled - COALESCE(OLD.cost_billed, OLD.cost_estimate)
            WHERE guild_id = OLD.guild_id AND user_id = OLD.user_id AND status = OLD.status;
        UPDATE guild_job_totals SET jobs = jobs - 1, estimated = estimated - OLD.cost_estimate,
            settled = settled - COALESCE(OLD.cost_billed, OLD.cost_estimate)
            WHERE guild_id = OLD.guild_id AND status = OLD.status;
        UPDATE job_totals SET jobs = jobs - 1 WHERE status = OLD.status;
        INSERT INTO member_job_totals
            SELECT NEW.guild_id, NEW.user_id, NEW.status, 1, NEW.cost_estimate,
                COALESCE(NEW.cost_billed, NEW.cost_estimate), NEW.created_at
            WHERE NEW.guild_id IS NOT NULL AND NEW.user_id IS NOT NULL
            ON CONFLICT (guild_id, user_id, status) DO UPDATE SET jobs = jobs + 1,
                estimated = estimated + excluded.estimated, settled = settled + excluded.settled,
                first_created = MIN(first_created, excluded.first_created);
        INSERT INTO guild_job_totals
            SELECT NEW.guild_id, NEW.status, 1, NEW.cost_estimate, COALESCE(NEW.cost_billed, NEW.cost_estimate),
                NEW.created_at
            WHERE NEW.guild_id IS NOT NULL
            ON CONFLICT (guild_id, status) DO UPDATE SET jobs = jobs + 1,
                estimated = estimated + excluded.estimated, settled = settled + excluded.settled,
                first_created = MIN(first_created, excluded.first_created);
        INSERT INTO job_totals VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET jobs = jobs + 1;
    END;

    -- A member's open jobs, newest first (/video status, autocomplete), without their finished history.
    CREATE INDEX jobs_member_unsettled ON jobs (guild_id, user_id, created_at)
        WHERE status IN ('reserved', 'queued', 'submitted', 'processing', 'succeeded');
    -- Usage in a window read from the index alone (member's quota, server's credits); replaces jobs_member.
    CREATE INDEX jobs_member_usage ON jobs (guild_id, user_id, created_at, status, cost_estimate, cost_billed);
    CREATE INDEX jobs_guild_usage ON jobs (guild_id, created_at, status, cost_estimate, cost_billed);
    DROP INDEX jobs_member;
    -- Jobs in flight per member and per server now come from the totals.
    DROP INDEX jobs_member_open;
    DROP INDEX jobs_guild_open;
    """,
    """
    -- Continue: the job whose last frame is this one's first frame (a chain of segments).
    ALTER TABLE jobs ADD COLUMN parent_id TEXT;
    -- The member's language (Discord's locale), for everything posted after the command's answer.
    ALTER TABLE jobs ADD COLUMN locale TEXT;
    -- Moderator review: the message in the review channel, the decision ('pending', 'approved', 'rejected').
    ALTER TABLE jobs ADD COLUMN review_message_id INTEGER;
    ALTER TABLE jobs ADD COLUMN review_state TEXT;
    ALTER TABLE jobs ADD COLUMN review_reason TEXT;
    -- Background work is claimed: who holds the job, until when, and the claim's number (fences stale writers).
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN lease_attempt INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    -- A server's cost above which a job asks for confirmation (milli-credits; NULL: never), and its review channel.
    ALTER TABLE guild_settings ADD COLUMN confirm_above INTEGER;
    ALTER TABLE guild_settings ADD COLUMN review_channel_id INTEGER;
    -- How a member is told that their video is done: 'mention' (the default), 'dm' or 'off'.
    CREATE TABLE member_prefs (
        user_id INTEGER PRIMARY KEY,
        notify TEXT NOT NULL CHECK (notify IN ('mention', 'dm', 'off'))
    );
    """,
    """
    -- The question a job answers (the command that asked to confirm it, the form that was sent): one job per
    -- question, whichever process writes it. NULL (the command line's jobs) is never a duplicate.
    ALTER TABLE jobs ADD COLUMN request_key TEXT;
    CREATE UNIQUE INDEX jobs_request_key ON jobs (request_key);
    """,
)

# Migration 5's running totals, kept by triggers from `jobs`: PostgreSQL counts the rows instead, so a copy there
# leaves them out (and a copy into SQLite gets them from the triggers).
RUNNING_TOTALS = ("member_job_totals", "guild_job_totals", "job_totals")

JOB_COLUMNS = tuple(f.name for f in fields(Job))
_SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
IN_FLIGHT_COLUMNS = ", ".join(f.name for f in fields(InFlight))  # a poll tick's narrow rows
_AT_PROVIDER = ", ".join(f"'{state}'" for state in AT_PROVIDER)
# State lists written into the SQL as literals (our own constants), so the partial indexes on them can serve.
_IN_PROGRESS = ", ".join(f"'{state}'" for state in IN_PROGRESS)
_OPEN = ", ".join(f"'{state}'" for state in OPEN)  # the WHERE of the partial index jobs_member_unsettled
_HOLDING_A_SLOT = ", ".join(f"'{state}'" for state in HOLDING_A_SLOT)
# Claims go to the jobs worked on least recently (a released claim keeps its time), then the oldest.
CLAIM_ORDER = "COALESCE(lease_until, 0), created_at, id"
# A video waiting in the review channel has no background work until a moderator decides: never claimed.
NOT_HELD_FOR_REVIEW = "(review_state IS NULL OR review_state <> 'pending' OR review_message_id IS NULL)"


def checked_update(states: str | Iterable[str], changes: dict[str, Any]) -> tuple[str, ...]:
    """The states a guarded job update may leave; refuses changing a fixed column or leaving out updated_at (the
    same rule for every backend)."""
    unknown = set(changes) - MUTABLE_JOB_FIELDS - {"status"}
    if unknown:
        raise ValueError(f"not a mutable job column: {sorted(unknown)}")
    if "updated_at" not in changes:
        raise ValueError("every job update must set updated_at")
    return (states,) if isinstance(states, str) else tuple(states)


class _Decision(Protocol):
    @property
    def allowed(self) -> bool: ...


DecisionT = TypeVar("DecisionT", bound=_Decision)


def _claimable(
    mark: str,
    statuses: Sequence[str],
    origin: str,
    now: float,
    ids: Sequence[str] | None,
    created_before: float | None,
    abandoned: bool | None,
) -> tuple[str, list[Any]]:
    """The WHERE of a claim (with `mark` as each parameter's placeholder): the states, the origin, no live lease."""
    sql = f"status IN ({', '.join(mark for _ in statuses)}) AND origin = {mark}"
    sql += f" AND (lease_until IS NULL OR lease_until <= {mark}) AND {NOT_HELD_FOR_REVIEW}"
    params: list[Any] = [*statuses, origin, now]
    if ids is not None:  # one JSON parameter, however many ids (SQLite caps the number of parameters)
        sql += f" AND id IN (SELECT value FROM json_each({mark}))"
        params.append(json.dumps(list(ids)))
    if created_before is not None:
        sql += f" AND created_at < {mark}"
        params.append(created_before)
    if abandoned is not None:
        sql += " AND lease_owner IS NOT NULL" if abandoned else " AND lease_owner IS NULL"
    return sql, params


class StoreUnavailable(Exception):
    """The database cannot be opened or is held by another bot process; the message says why, in one line."""


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


class Store:
    """One long-lived aiosqlite connection in WAL mode; writes are serialised by a lock and run in transactions."""

    def __init__(self, db: aiosqlite.Connection, instance_lock: int | None = None) -> None:
        self._db = db
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
                    f"UPDATE jobs SET lease_until = 0 WHERE status IN ({_OPEN}) AND lease_owner IS NOT NULL"
                )
            await db.execute("BEGIN IMMEDIATE")  # a read-only file or folder fails here, at start, not at a job
            await db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            await db.close()
            if instance_lock is not None:
                os.close(instance_lock)
            raise StoreUnavailable(f"cannot use {path}: {exc}") from None
        except BaseException:
            await db.close()
            if instance_lock is not None:
                os.close(instance_lock)
            raise
        return store

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL) and let another process have the database."""
        await self._db.close()
        if self._instance_lock is not None:
            os.close(self._instance_lock)
            self._instance_lock = None

    async def _migrate(self) -> None:
        version = await self._scalar("PRAGMA user_version")
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

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    # --- jobs -------------------------------------------------------------------------------------------

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

    async def add_job(self, job: Job) -> None:
        """Write a new job in its own transaction."""
        async with self.transaction() as db:
            await self.insert_job(db, job)

    async def transition(
        self,
        job_id: str,
        from_status: str | Iterable[str],
        to_status: str,
        *,
        lease: Lease | None = None,
        **changes: Any,
    ) -> bool:
        """Move a job from one state to another, once: False when another path already moved it, or (with `lease`)
        when the job was claimed again since that lease was taken."""
        return await self._guarded_update(job_id, from_status, {"status": to_status, **changes}, lease)

    async def update_job(
        self, job_id: str, in_status: str | Iterable[str], *, lease: Lease | None = None, **changes: Any
    ) -> bool:
        """Change fields of a job without moving it, if it is still in one of the given states (and under `lease`)."""
        return await self._guarded_update(job_id, in_status, changes, lease)

    async def _guarded_update(
        self, job_id: str, states: str | Iterable[str], changes: dict[str, Any], lease: Lease | None
    ) -> bool:
        allowed = checked_update(states, changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        marks = ", ".join("?" for _ in allowed)
        fence = " AND lease_owner = ? AND lease_attempt = ?" if lease else ""
        async with self.transaction() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks}){fence}",
                (*changes.values(), job_id, *allowed, *((lease.owner, lease.attempt) if lease else ())),
            )
            return cursor.rowcount == 1

    # --- claims: the background work of one process (SQLite serves one; the same calls as PostgreSQL's) ---------

    async def claim_jobs(
        self,
        statuses: Sequence[str],
        *,
        owner: str,
        now: float,
        seconds: float,
        limit: int,
        origin: str = "discord",
        ids: Sequence[str] | None = None,
        created_before: float | None = None,
        abandoned: bool | None = None,
    ) -> list[Job]:
        """Claim up to `limit` jobs in these states that nobody holds (no lease, or an expired one) for `seconds`,
        each claim bumping the job's lease attempt; the jobs as claimed, oldest first.

        Leases here are times of `now`, the process's clock: SQLite serves one process, so there is one clock.
        `ids` and `created_before` narrow the jobs; `abandoned` True takes only jobs whose holder let its lease
        expire without releasing it (it stopped in the middle of the work), False only the others."""
        sql, params = _claimable("?", statuses, origin, now, ids, created_before, abandoned)
        rows = await self._claim(sql, params, ", ".join(JOB_COLUMNS), owner=owner, until=now + seconds, limit=limit)
        return sorted((Job(*row) for row in rows), key=lambda job: job.created_at)

    async def claim_in_flight(
        self, ids: Sequence[str], *, owner: str, now: float, seconds: float, limit: int, origin: str = "discord"
    ) -> list[InFlight]:
        """`claim_jobs` of these jobs at the provider, returning only the narrow rows a poll tick reads."""
        sql, params = _claimable("?", AT_PROVIDER, origin, now, ids, None, None)
        rows = await self._claim(sql, params, IN_FLIGHT_COLUMNS, owner=owner, until=now + seconds, limit=limit)
        return sorted((InFlight(*row) for row in rows), key=lambda job: job.created_at)

    async def _claim(
        self, where: str, params: list[Any], columns: str, *, owner: str, until: float, limit: int
    ) -> list[Any]:
        async with self.transaction() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET lease_owner = ?, lease_until = ?, lease_attempt = lease_attempt + 1"
                f" WHERE id IN (SELECT id FROM jobs WHERE {where} ORDER BY {CLAIM_ORDER} LIMIT ?) RETURNING {columns}",
                (owner, until, *params, limit),
            )
            return list(await cursor.fetchall())

    async def claim_queued(
        self,
        *,
        capacity: int,
        owner: str,
        now: float,
        seconds: float,
        origin: str = "discord",
        order: Callable[[list[Job]], list[Job]],
    ) -> list[Job]:
        """Take queued jobs for as many provider slots as are free (`capacity` minus the jobs holding one), in
        `order`, moving each to `reserved` under a lease of `seconds`; the count and the move are one transaction."""
        async with self.transaction() as db:
            free = capacity - await self._holding(db)
            if free <= 0:
                return []
            queued = await self._jobs(
                f"{_SELECT_JOB} WHERE status = 'queued' AND origin = ? AND (lease_until IS NULL OR lease_until <= ?)"
                " ORDER BY created_at",
                (origin, now),
            )
            chosen = [job.id for job in order(queued)[:free]]
            if not chosen:
                return []
            cursor = await db.execute(
                "UPDATE jobs SET status = 'reserved', lease_owner = ?, lease_until = ?,"
                " lease_attempt = lease_attempt + 1, updated_at = ?"
                f" WHERE status = 'queued' AND id IN ({', '.join('?' for _ in chosen)})"
                f" RETURNING {', '.join(JOB_COLUMNS)}",
                (owner, now + seconds, now, *chosen),
            )
            taken = {row[0]: Job(*row) for row in await cursor.fetchall()}
        return [taken[job_id] for job_id in chosen if job_id in taken]

    async def take_slot(self, job_id: str, lease: Lease, *, capacity: int, now: float, seconds: float) -> bool:
        """A reserved job (held under `lease`) keeps a provider slot to be sent now: only when nobody is queued and
        fewer than `capacity` other jobs hold one; the count and the decision are one transaction."""
        async with self.transaction() as db:
            if await self._scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued'"):
                return False
            if await self._holding(db, besides=job_id) >= capacity:
                return False
            cursor = await db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'reserved'"
                " AND lease_owner = ? AND lease_attempt = ?",
                (now + seconds, job_id, lease.owner, lease.attempt),
            )
            return cursor.rowcount == 1

    async def _holding(self, db: aiosqlite.Connection, *, besides: str = "") -> int:
        async with db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ({_HOLDING_A_SLOT}) AND id != ?", (besides,)
        ) as cursor:
            (count,) = await cursor.fetchone() or (0,)
        return int(count)

    async def renew_lease(self, job_id: str, lease: Lease, *, now: float, seconds: float) -> bool:
        """Extend a lease still held to `seconds` from now (long work: a delivery); False when the job was claimed
        again."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_attempt = ?",
                (now + seconds, job_id, lease.owner, lease.attempt),
            )
            return cursor.rowcount == 1

    async def release_leases(self, held: Sequence[tuple[str, Lease]], now: float) -> None:
        """Give back finished claims (job id, lease); one claimed again since is left alone. The release time
        stays, so the next claims go to the jobs worked on least recently."""
        if not held:
            return
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE jobs SET lease_owner = NULL, lease_until = ? WHERE id = ? AND lease_owner = ?"
                " AND lease_attempt = ?",
                [(now, job_id, lease.owner, lease.attempt) for job_id, lease in held],
            )

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        rows = await self._jobs(f"{_SELECT_JOB} WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    async def job_by_task(self, task_id: str) -> Job | None:
        """The job the provider knows under this task id, or None."""
        rows = await self._jobs(f"{_SELECT_JOB} WHERE provider_task_id = ?", (task_id,))
        return rows[0] if rows else None

    async def jobs_by_tasks(self, task_ids: Sequence[str]) -> list[Job]:
        """The jobs the provider knows under any of these task ids, in one query (a flood of callbacks' hints is
        looked up at once; the ids are one JSON parameter, so there is no limit on their number)."""
        if not task_ids:
            return []
        sql = f"{_SELECT_JOB} WHERE provider_task_id IN (SELECT value FROM json_each(?))"
        return await self._jobs(sql, (json.dumps(list(task_ids)),))

    async def jobs_in(self, statuses: Sequence[str], *, origin: str | None = None) -> list[Job]:
        """Jobs in any of these states (of one origin, if given), oldest first."""
        marks = ", ".join("?" for _ in statuses)
        sql = f"{_SELECT_JOB} WHERE status IN ({marks})"
        params: list[Any] = list(statuses)
        if origin is not None:
            sql += " AND origin = ?"
            params.append(origin)
        return await self._jobs(sql + " ORDER BY created_at", params)

    async def in_flight(self, *, origin: str) -> list[InFlight]:
        """The jobs of one origin at the provider, oldest first, as narrow rows (what a poll tick reads)."""
        async with self._db.execute(
            f"SELECT {IN_FLIGHT_COLUMNS} FROM jobs WHERE status IN ({_AT_PROVIDER}) AND origin = ? ORDER BY created_at",
            (origin,),
        ) as cursor:
            return [InFlight(*row) for row in await cursor.fetchall()]

    async def find_job(
        self, guild_id: int, prefix: str, *, user_id: int | None = None, statuses: Sequence[str] | None = None
    ) -> Job | None:
        """The newest job of a server (of one member, if given) whose id starts with `prefix` (hex), or None."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return None
        # A range on the primary key, so the prefix is found by the index whatever the server's history; the unary
        # `+` keeps the planner off the member's index, which would walk all of a heavy member's jobs.
        sql = f"{_SELECT_JOB} WHERE id >= ? AND id < ? AND +guild_id = ?"
        params: list[Any] = [prefix, prefix + "g", guild_id]
        if user_id is not None:
            sql += " AND +user_id = ?"
            params.append(user_id)
        if statuses is not None:
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        rows = await self._jobs(sql + " ORDER BY created_at DESC LIMIT 1", params)
        return rows[0] if rows else None

    async def member_jobs(
        self, guild_id: int, user_id: int, *, statuses: Sequence[str] | None = None, limit: int = 10, offset: int = 0
    ) -> list[Job]:
        """A member's jobs in one server, newest first."""
        sql = f"{_SELECT_JOB} WHERE guild_id = ? AND user_id = ?"
        params: list[Any] = [guild_id, user_id]
        if statuses is not None:
            if set(statuses) <= set(OPEN):  # the literal lets the open jobs' partial index serve, not the history
                sql += f" AND status IN ({_OPEN})"
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        sql += " ORDER BY created_at DESC LIMIT ? OFFSET ?"
        return await self._jobs(sql, [*params, limit, offset])

    async def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each state (from the running totals)."""
        async with self._db.execute("SELECT status, jobs FROM job_totals WHERE jobs > 0 ORDER BY status") as cursor:
            return {row[0]: int(row[1]) for row in await cursor.fetchall()}

    async def credits_used(self, guild_id: int, since: float) -> int:
        """Credits a server's members used or hold since a time."""
        async with self._db.execute(
            "SELECT MIN(first_created), COALESCE(SUM(settled), 0) FROM guild_job_totals"
            " WHERE guild_id = ? AND status NOT IN ('failed', 'cancelled')",
            (guild_id,),
        ) as cursor:
            first, total = await cursor.fetchone() or (None, 0)
        if first is None or since <= first:  # the window holds all the server's jobs: the totals answer
            return int(total)
        return int(
            await self._scalar(
                "SELECT COALESCE(SUM(COALESCE(cost_billed, cost_estimate)), 0) FROM jobs"
                " WHERE guild_id = ? AND created_at >= ? AND status NOT IN ('failed', 'cancelled')",
                (guild_id, since),
            )
        )

    async def count_in(self, statuses: Sequence[str]) -> int:
        """How many jobs are in any of these states."""
        marks = ", ".join("?" for _ in statuses)
        return int(await self._scalar(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses))

    async def count_member_jobs(self, guild_id: int, user_id: int) -> int:
        """How many jobs a member has in one server."""
        return int(
            await self._scalar(
                "SELECT COALESCE(SUM(jobs), 0) FROM member_job_totals WHERE guild_id = ? AND user_id = ?",
                (guild_id, user_id),
            )
        )

    async def render_times(self, duration: int, resolution: str, *, limit: int = 25) -> list[float]:
        """Seconds from submit to finish of the latest delivered jobs of this shape, newest first."""
        async with self._db.execute(
            "SELECT finished_at - submitted_at FROM jobs"
            " WHERE status = 'delivered' AND duration = ? AND resolution = ? AND submitted_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT ?",
            (duration, resolution, limit),
        ) as cursor:
            return [float(row[0]) for row in await cursor.fetchall()]

    async def _jobs(self, sql: str, params: Sequence[Any]) -> list[Job]:
        async with self._db.execute(sql, params) as cursor:
            return [Job(*row) for row in await cursor.fetchall()]

    # --- quotas -----------------------------------------------------------------------------------------

    async def quota_settings(self, guild_id: int, defaults: QuotaSettings) -> QuotaSettings:
        """A server's quota settings, or the bot's defaults when its moderators never changed them."""
        async with self._db.execute(
            "SELECT default_limit, period, member_in_flight, server_in_flight, log_channel_id, confirm_above,"
            " review_channel_id"
            " FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        ) as cursor:
            row = await cursor.fetchone()
        return QuotaSettings(*row) if row else defaults

    async def log_channels(self) -> dict[int, int]:
        """Every server's log channel, where its moderators set one (the fleet's alerts go to all of them)."""
        async with self._db.execute(
            "SELECT guild_id, log_channel_id FROM guild_settings WHERE log_channel_id IS NOT NULL"
        ) as cursor:
            return {int(guild): int(channel) for guild, channel in await cursor.fetchall()}

    async def save_quota_settings(self, guild_id: int, settings: QuotaSettings, audit: AuditEntry) -> None:
        """Store a server's quota settings (all of them: callers change one field with `replace`) and the
        moderator's audit row, in one transaction."""
        async with self.transaction() as db:
            await _insert_audit(db, audit)
            await db.execute(
                "INSERT INTO guild_settings (guild_id, default_limit, period, member_in_flight, server_in_flight,"
                " log_channel_id, confirm_above, review_channel_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id) DO UPDATE SET"
                " default_limit = excluded.default_limit, period = excluded.period,"
                " member_in_flight = excluded.member_in_flight, server_in_flight = excluded.server_in_flight,"
                " log_channel_id = excluded.log_channel_id, confirm_above = excluded.confirm_above,"
                " review_channel_id = excluded.review_channel_id",
                (guild_id, *astuple(settings)),
            )

    async def member_quota(self, guild_id: int, user_id: int) -> MemberQuota:
        """A member's own override and block, if any."""
        async with self._db.execute(
            "SELECT override, blocked_reason FROM member_quotas WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        ) as cursor:
            row = await cursor.fetchone()
        return MemberQuota(*row) if row else MemberQuota(None, None)

    async def save_member_quota(self, guild_id: int, user_id: int, quota: MemberQuota, audit: AuditEntry) -> None:
        """Store a member's override and block (both empty removes the row) and the audit row, in one transaction."""
        async with self.transaction() as db:
            await _insert_audit(db, audit)
            if quota == MemberQuota(None, None):
                await db.execute("DELETE FROM member_quotas WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
                return
            await db.execute(
                "INSERT INTO member_quotas (guild_id, user_id, override, blocked_reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (guild_id, user_id) DO UPDATE SET override = excluded.override,"
                " blocked_reason = excluded.blocked_reason",
                (guild_id, user_id, quota.override, quota.blocked_reason),
            )

    async def role_quotas(self, guild_id: int, role_ids: Sequence[int] | None = None) -> dict[int, int | None]:
        """Limits set on roles (None: unlimited), for the given roles or for every role of the server."""
        sql = "SELECT role_id, quota FROM role_quotas WHERE guild_id = ?"
        params: list[Any] = [guild_id]
        if role_ids is not None:
            sql += f" AND role_id IN ({', '.join('?' for _ in role_ids)})"
            params.extend(role_ids)
        async with self._db.execute(sql, params) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def save_role_quota(
        self, guild_id: int, role_id: int, quota: int | None, audit: AuditEntry, *, remove: bool = False
    ) -> None:
        """Set a role's limit (None: unlimited) or remove its setting, with the audit row, in one transaction."""
        async with self.transaction() as db:
            await _insert_audit(db, audit)
            if remove:
                await db.execute("DELETE FROM role_quotas WHERE guild_id = ? AND role_id = ?", (guild_id, role_id))
                return
            await db.execute(
                "INSERT INTO role_quotas (guild_id, role_id, quota) VALUES (?, ?, ?)"
                " ON CONFLICT (guild_id, role_id) DO UPDATE SET quota = excluded.quota",
                (guild_id, role_id, quota),
            )

    async def add_grant(self, guild_id: int, user_id: int, amount: int, audit: AuditEntry) -> None:
        """Give a member bonus credits for the current period, with the audit row (its moderator, reason and time),
        in one transaction."""
        reason, moderator_id, now = audit.reason or "", audit.moderator_id, audit.created_at
        async with self.transaction() as db:
            await _insert_audit(db, audit)
            await db.execute(
                "INSERT INTO grants (guild_id, user_id, amount, reason, moderator_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (guild_id, user_id, amount, reason, moderator_id, now),
            )

    async def usage(self, guild_id: int, user_id: int, since: float) -> Usage:
        """A member's credits used, reserved and granted since a time, derived from jobs and grants."""
        return await self._usage(self._db, guild_id, user_id, since)

    async def _usage(self, db: aiosqlite.Connection, guild_id: int, user_id: int, since: float) -> Usage:
        # Failed and cancelled jobs release their credits simply by not being counted.
        async with db.execute(
            "SELECT MIN(first_created),"
            " COALESCE(SUM(CASE WHEN status IN ('succeeded', 'delivered', 'undeliverable', 'rejected')"
            "   THEN settled END), 0),"
            f" COALESCE(SUM(CASE WHEN status IN ({_IN_PROGRESS}) THEN estimated END), 0),"
            f" COALESCE(SUM(CASE WHEN status IN ({_IN_PROGRESS}) THEN jobs END), 0)"
            " FROM member_job_totals WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        ) as cursor:
            first, used, reserved, in_flight = await cursor.fetchone() or (None, 0, 0, 0)
        if first is not None and since > first:  # a window of part of their history: the index's range of it
            async with db.execute(
                "SELECT"
                " COALESCE(SUM(CASE WHEN status IN ('succeeded', 'delivered', 'undeliverable', 'rejected')"
                "   THEN COALESCE(cost_billed, cost_estimate) END), 0),"
                f" COALESCE(SUM(CASE WHEN status IN ({_IN_PROGRESS})"
                "   THEN cost_estimate END), 0)"
                " FROM jobs WHERE guild_id = ? AND user_id = ? AND created_at >= ?",
                (guild_id, user_id, since),
            ) as cursor:
                used, reserved = await cursor.fetchone() or (0, 0)
        async with db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM grants WHERE guild_id = ? AND user_id = ? AND created_at >= ?",
            (guild_id, user_id, since),
        ) as cursor:
            (granted,) = await cursor.fetchone() or (0,)
        return Usage(int(used), int(reserved), int(granted), int(in_flight))

    async def _server_in_flight(self, db: aiosqlite.Connection, guild_id: int) -> int:
        async with db.execute(
            f"SELECT COALESCE(SUM(jobs), 0) FROM guild_job_totals WHERE guild_id = ? AND status IN ({_IN_PROGRESS})",
            (guild_id,),
        ) as cursor:
            (count,) = await cursor.fetchone() or (0,)
        return int(count)

    async def reserve_job(
        self,
        job: Job,
        *,
        role_ids: Sequence[int],
        defaults: QuotaSettings,
        window_start: Callable[[str], float],
        decide: Callable[[QuotaFacts], DecisionT],
    ) -> tuple[QuotaFacts, DecisionT]:
        """Check the quota and write the job in ONE transaction, so concurrent commands cannot overspend."""
        assert job.guild_id is not None and job.user_id is not None
        async with self.transaction() as db:
            settings = await self.quota_settings(job.guild_id, defaults)
            facts = QuotaFacts(
                settings=settings,
                member=await self.member_quota(job.guild_id, job.user_id),
                role_quotas=await self.role_quotas(job.guild_id, role_ids),
                usage=await self._usage(db, job.guild_id, job.user_id, window_start(settings.period)),
                server_in_flight=await self._server_in_flight(db, job.guild_id),
            )
            decision = decide(facts)
            if decision.allowed:
                await self.insert_job(db, job)
        return facts, decision

    async def usage_table(self, guild_id: int, since: float, *, limit: int = 15) -> list[UsageRow]:
        """The top members of a server since a time: jobs, seconds of video, credits, billed units."""
        async with self._db.execute(
            "SELECT user_id, COUNT(*), COALESCE(SUM(COALESCE(video_seconds, duration)), 0),"
            " COALESCE(SUM(COALESCE(cost_billed, cost_estimate)), 0), COALESCE(SUM(cost_billed), 0)"
            " FROM jobs WHERE guild_id = ? AND created_at >= ?"
            " AND status NOT IN ('failed', 'cancelled')"
            " GROUP BY user_id ORDER BY 4 DESC LIMIT ?",
            (guild_id, since, limit),
        ) as cursor:
            return [UsageRow(int(r[0]), int(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in await cursor.fetchall()]

    async def audit_entries(
        self, guild_id: int, *, target_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[AuditEntry]:
        """A server's moderator actions, newest first, optionally about one member."""
        sql = (
            "SELECT guild_id, moderator_id, action, target_id, before, after, reason, created_at"
            " FROM audit_log WHERE guild_id = ?"
        )
        params: list[Any] = [guild_id]
        if target_id is not None:
            sql += " AND target_id = ?"
            params.append(target_id)
        async with self._db.execute(sql + " ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset]) as cursor:
            return [AuditEntry(*row) for row in await cursor.fetchall()]

    # --- images -----------------------------------------------------------------------------------------

    async def put_image(self, data: bytes, mime: str, width: int, height: int) -> str:
        """Keep a first frame (once per content) and return its sha256."""
        # ~5 ms per 10 MB, and hashlib lets go of the GIL meanwhile: a thread keeps the event loop free.
        hashed = await asyncio.to_thread(hashlib.sha256, data) if len(data) > 64 * 1024 else hashlib.sha256(data)
        digest = hashed.hexdigest()
        async with self.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO images (sha256, mime, width, height, data) VALUES (?, ?, ?, ?, ?)",
                (digest, mime, width, height, data),
            )
        return digest

    async def get_image(self, sha256: str) -> StoredImage | None:
        """A kept first frame, or None."""
        async with self._db.execute(
            "SELECT sha256, mime, width, height, data FROM images WHERE sha256 = ?", (sha256,)
        ) as cursor:
            row = await cursor.fetchone()
        return StoredImage(row[0], row[1], row[2], row[3], bytes(row[4])) if row else None

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

    # --- member preferences and review --------------------------------------------------------------------

    async def notify_preference(self, user_id: int) -> str:
        """How a member wants to be told their video is done: 'mention' (the default), 'dm' or 'off'."""
        value = await self._scalar("SELECT notify FROM member_prefs WHERE user_id = ?", (user_id,))
        return str(value) if value else "mention"

    async def set_notify_preference(self, user_id: int, mode: str) -> None:
        """Keep a member's choice of 'mention', 'dm' or 'off' (the table refuses anything else)."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO member_prefs (user_id, notify) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET notify = excluded.notify",
                (user_id, mode),
            )

    async def decide_review(self, job_id: str, from_review: str | None, to_status: str, **changes: Any) -> bool:
        """Move a `succeeded` job whose review_state is still `from_review` (None: never reviewed), once: False
        when another moderator (or another path) decided first."""
        changes = {"status": to_status, **changes}
        checked_update("succeeded", changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        async with self.transaction() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'succeeded' AND review_state IS ?",
                (*changes.values(), job_id, from_review),
            )
            return cursor.rowcount == 1


async def _insert_audit(db: aiosqlite.Connection, entry: AuditEntry) -> None:
    """One moderator action, written inside the transaction of the change it records."""
    await db.execute(
        "INSERT INTO audit_log (guild_id, moderator_id, action, target_id, before, after, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        astuple(entry),
    )
