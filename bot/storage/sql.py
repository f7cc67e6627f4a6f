"""The statements both databases run alike, written once with `?` placeholders, and the logic around them.

`SqlStore` holds every method whose SQL is the same on SQLite and PostgreSQL; `bot.storage.sqlite.Store` and
`bot.storage.postgres.PgStore` supply only what differs, as small hooks: how a statement runs on a connection (psycopg
gets `?` turned into `%s`: one spelling to read, and no SQL of ours holds a literal `?` or `%`), where reads outside
a transaction go, the lease clock (SQLite: the process's `now`; PostgreSQL: the database's clock), a list parameter,
`FOR UPDATE SKIP LOCKED`, advisory locks, and the few queries each answers its own way (SQLite from running totals).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, fields
from typing import Any, Protocol, TypeVar

from bot.core.model import (
    AT_PROVIDER,
    HOLDING_A_SLOT,
    IN_PROGRESS,
    MUTABLE_JOB_FIELDS,
    OPEN,
    AuditEntry,
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

JOB_COLUMNS = tuple(f.name for f in fields(Job))
SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
IN_FLIGHT_COLUMNS = ", ".join(f.name for f in fields(InFlight))  # a poll tick's narrow rows


def literals(states: Iterable[str]) -> str:
    """Our own state constants written into the SQL, so the partial indexes on them can serve."""
    return ", ".join(f"'{state}'" for state in states)


IN_PROGRESS_SQL = literals(IN_PROGRESS)
SETTLED_SQL = literals(("succeeded", "delivered", "undeliverable", "rejected"))
OPEN_SQL = literals(OPEN)  # the WHERE of the partial index jobs_member_unsettled
# Claims go to the jobs worked on least recently (a released claim keeps its time), then the oldest.
CLAIM_ORDER = "COALESCE(lease_until, 0), created_at, id"
# A video waiting in the review channel has no background work until a moderator decides: never claimed.
NOT_HELD_FOR_REVIEW = "(review_state IS NULL OR review_state <> 'pending' OR review_message_id IS NULL)"

# Advisory locks (PostgreSQL; SQLite's write transaction already excludes every other writer).
DISPATCH_LOCK = "kling-bot:dispatch"  # counting the provider's slots and taking one: one process at a time
RESERVE_LOCK = "kling-bot:reserve:"


def marks(values: Sequence[Any]) -> str:
    """One `?` per value for `IN (...)`; NULL for none, which matches nothing (an empty `IN ()` is an error)."""
    return ", ".join("?" for _ in values) or "NULL"


class StoreUnavailable(Exception):
    """The database cannot be opened or is held by another bot process; the message says why, in one line."""


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


class SqlStore:
    """The methods both backends share. A `db` argument is a connection inside a transaction the caller holds;
    None reads outside any transaction (SQLite: on its reader connection)."""

    # `FOR UPDATE SKIP LOCKED` where processes claim at once (PostgreSQL); SQLite's writer is alone.
    SKIP_LOCKED = ""
    # Comparing with a parameter that may be NULL.
    NULL_SAFE_EQUALS = "IS"

    # --- the hooks each backend supplies ----------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def _fetch(self, db: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement on `db` and return its rows."""
        raise NotImplementedError

    async def _run(self, db: Any, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement on `db` and return how many rows it changed."""
        raise NotImplementedError

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read outside any transaction."""
        raise NotImplementedError

    def _lease_until(self, now: float, seconds: float) -> tuple[str, float]:
        """The SQL and its parameter for a lease that lasts `seconds`."""
        raise NotImplementedError

    def _lease_free(self, now: float) -> tuple[str, list[Any]]:
        """The SQL and parameters of "nobody holds this job's lease"."""
        raise NotImplementedError

    def _any(self, column: str, values: Sequence[Any], kind: str) -> tuple[str, list[Any]]:
        """`column` is one of `values` (however many: one parameter); `kind` is PostgreSQL's element type."""
        raise NotImplementedError

    async def _advisory_lock(self, db: Any, key: str) -> None:
        """A lock held until `db`'s transaction ends, across processes."""

    def _param(self, name: str, value: Any) -> Any:
        """A job column's value as this database takes it."""
        return value

    def _set_mark(self, name: str, changes: dict[str, Any]) -> str:
        """What a guarded update sets `name` to: a parameter, or the database's own value."""
        return "?"

    async def insert_job(self, db: Any, job: Job) -> None:
        raise NotImplementedError

    async def _usage(self, db: Any, guild_id: int, user_id: int, since: float) -> Usage:
        raise NotImplementedError

    async def _server_in_flight(self, db: Any, guild_id: int) -> int:
        raise NotImplementedError

    # --- shared helpers ---------------------------------------------------------------------------------

    async def _select(self, db: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await (self._read(sql, params) if db is None else self._fetch(db, sql, params))

    async def _scalar(self, sql: str, params: Sequence[Any] = (), db: Any = None) -> Any:
        rows = await self._select(db, sql, params)
        return rows[0][0] if rows else None

    async def _jobs(self, sql: str, params: Sequence[Any], db: Any = None) -> list[Job]:
        return [Job(*row) for row in await self._select(db, sql, params)]

    # --- jobs -------------------------------------------------------------------------------------------

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
        # Column names come from the checked set; values are parameters. A racing UPDATE waits for the row (or the
        # database) lock, then re-checks the status (and the lease): only one moves the job.
        allowed = checked_update(states, changes)
        set_to = {name: self._set_mark(name, changes) for name in changes}
        assignments = ", ".join(f"{name} = {mark}" for name, mark in set_to.items())
        values = [self._param(name, value) for name, value in changes.items() if set_to[name] == "?"]
        fence = " AND lease_owner = ? AND lease_attempt = ?" if lease else ""
        async with self.transaction() as db:
            changed = await self._run(
                db,
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks(allowed)}){fence}",
                (*values, job_id, *allowed, *((lease.owner, lease.attempt) if lease else ())),
            )
            return changed == 1

    # --- claims: the background work each process takes (see docs/fleet.md) -------------------------------

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

        `ids` and `created_before` narrow the jobs; `abandoned` True takes only jobs whose holder let its lease
        expire without releasing it (it stopped in the middle of the work), False only the others."""
        sql, params = self._claimable(statuses, origin, now, ids, created_before, abandoned)
        rows = await self._claim(
            sql, params, ", ".join(JOB_COLUMNS), owner=owner, now=now, seconds=seconds, limit=limit
        )
        return sorted((Job(*row) for row in rows), key=lambda job: job.created_at)

    async def claim_in_flight(
        self, ids: Sequence[str], *, owner: str, now: float, seconds: float, limit: int, origin: str = "discord"
    ) -> list[InFlight]:
        """`claim_jobs` of these jobs at the provider, returning only the narrow rows a poll tick reads."""
        sql, params = self._claimable(AT_PROVIDER, origin, now, ids, None, None)
        rows = await self._claim(sql, params, IN_FLIGHT_COLUMNS, owner=owner, now=now, seconds=seconds, limit=limit)
        return sorted((InFlight(*row) for row in rows), key=lambda job: job.created_at)

    def _claimable(
        self,
        statuses: Sequence[str],
        origin: str,
        now: float,
        ids: Sequence[str] | None,
        created_before: float | None,
        abandoned: bool | None,
    ) -> tuple[str, list[Any]]:
        """The WHERE of a claim: the states, the origin, no live lease, not waiting for review."""
        free, free_params = self._lease_free(now)
        sql = f"status IN ({marks(statuses)}) AND origin = ? AND {free} AND {NOT_HELD_FOR_REVIEW}"
        params: list[Any] = [*statuses, origin, *free_params]
        if ids is not None:
            among, values = self._any("id", ids, "text")
            sql += f" AND {among}"
            params.extend(values)
        if created_before is not None:
            sql += " AND created_at < ?"
            params.append(created_before)
        if abandoned is not None:
            sql += " AND lease_owner IS NOT NULL" if abandoned else " AND lease_owner IS NULL"
        return sql, params

    async def _claim(
        self, where: str, params: list[Any], columns: str, *, owner: str, now: float, seconds: float, limit: int
    ) -> list[Any]:
        until, until_value = self._lease_until(now, seconds)
        async with self.transaction() as db:
            return await self._fetch(
                db,
                f"UPDATE jobs SET lease_owner = ?, lease_until = {until}, lease_attempt = lease_attempt + 1"
                f" WHERE id IN (SELECT id FROM jobs WHERE {where} ORDER BY {CLAIM_ORDER}{self.SKIP_LOCKED} LIMIT ?)"
                f" RETURNING {columns}",
                (owner, until_value, *params, limit),
            )

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
        """Take queued jobs for as many provider slots as are free (`capacity` minus the jobs holding one, in the
        whole fleet), in `order`, moving each to `reserved` under a lease of `seconds`. The count and the move are
        one transaction, under a lock across processes, so two cannot both take the last slot."""
        async with self.transaction() as db:
            await self._advisory_lock(db, DISPATCH_LOCK)
            free = capacity - await self._holding(db)
            if free <= 0:
                return []
            lease_free, free_params = self._lease_free(now)
            queued = await self._jobs(
                f"{SELECT_JOB} WHERE status = 'queued' AND origin = ? AND {lease_free} ORDER BY created_at",
                (origin, *free_params),
                db,
            )
            chosen = [job.id for job in order(queued)[:free]]
            if not chosen:
                return []
            until, until_value = self._lease_until(now, seconds)
            rows = await self._fetch(
                db,
                f"UPDATE jobs SET status = 'reserved', lease_owner = ?, lease_until = {until},"
                " lease_attempt = lease_attempt + 1, updated_at = ?"
                f" WHERE status = 'queued' AND id IN ({marks(chosen)}) RETURNING {', '.join(JOB_COLUMNS)}",
                (owner, until_value, now, *chosen),
            )
            taken = {row[0]: Job(*row) for row in rows}
        return [taken[job_id] for job_id in chosen if job_id in taken]

    async def take_slot(self, job_id: str, lease: Lease, *, capacity: int, now: float, seconds: float) -> bool:
        """A reserved job (held under `lease`) keeps a provider slot to be sent now: only when nobody is queued and
        fewer than `capacity` other jobs of the fleet hold one; under the same lock as `claim_queued`."""
        async with self.transaction() as db:
            await self._advisory_lock(db, DISPATCH_LOCK)
            if await self._fetch(db, "SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1"):
                return False
            if await self._holding(db, besides=job_id) >= capacity:
                return False
            until, until_value = self._lease_until(now, seconds)
            changed = await self._run(
                db,
                f"UPDATE jobs SET lease_until = {until} WHERE id = ? AND status = 'reserved'"
                " AND lease_owner = ? AND lease_attempt = ?",
                (until_value, job_id, lease.owner, lease.attempt),
            )
            return changed == 1

    async def _holding(self, db: Any, *, besides: str = "") -> int:
        sql = f"SELECT COUNT(*) FROM jobs WHERE status IN ({literals(HOLDING_A_SLOT)}) AND id != ?"
        return int(await self._scalar(sql, (besides,), db) or 0)

    async def renew_lease(self, job_id: str, lease: Lease, *, now: float, seconds: float) -> bool:
        """Extend a lease still held to `seconds` from now (long work: a delivery); False when the job was claimed
        again. A delivery's check right before its post is this call: the fence of the post."""
        until, until_value = self._lease_until(now, seconds)
        async with self.transaction() as db:
            changed = await self._run(
                db,
                f"UPDATE jobs SET lease_until = {until} WHERE id = ? AND lease_owner = ? AND lease_attempt = ?",
                (until_value, job_id, lease.owner, lease.attempt),
            )
            return changed == 1

    # --- job lookups ------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        rows = await self._jobs(f"{SELECT_JOB} WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    async def job_by_task(self, task_id: str) -> Job | None:
        """The job the provider knows under this task id, or None."""
        rows = await self._jobs(f"{SELECT_JOB} WHERE provider_task_id = ?", (task_id,))
        return rows[0] if rows else None

    async def jobs_by_tasks(self, task_ids: Sequence[str]) -> list[Job]:
        """The jobs the provider knows under any of these task ids, in one query (a flood of callbacks' hints is
        looked up at once; the ids are one parameter, so there is no limit on their number)."""
        if not task_ids:
            return []
        among, params = self._any("provider_task_id", task_ids, "text")
        return await self._jobs(f"{SELECT_JOB} WHERE {among}", params)

    async def jobs_in(self, statuses: Sequence[str], *, origin: str | None = None) -> list[Job]:
        """Jobs in any of these states (of one origin, if given), oldest first."""
        sql = f"{SELECT_JOB} WHERE status IN ({marks(statuses)})"
        params: list[Any] = list(statuses)
        if origin is not None:
            sql += " AND origin = ?"
            params.append(origin)
        return await self._jobs(sql + " ORDER BY created_at", params)

    async def in_flight(self, *, origin: str) -> list[InFlight]:
        """The jobs of one origin at the provider, oldest first, as narrow rows (what a poll tick reads)."""
        rows = await self._read(
            f"SELECT {IN_FLIGHT_COLUMNS} FROM jobs WHERE status IN ({literals(AT_PROVIDER)}) AND origin = ?"
            " ORDER BY created_at",
            (origin,),
        )
        return [InFlight(*row) for row in rows]

    async def find_job(
        self, guild_id: int, prefix: str, *, user_id: int | None = None, statuses: Sequence[str] | None = None
    ) -> Job | None:
        """The newest job of a server (of one member, if given) whose id starts with `prefix` (hex), or None."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return None
        # A range on the primary key, so the prefix is found by the index whatever the server's history; the unary
        # `+` keeps the planner off the member's index, which would walk all of a heavy member's jobs.
        sql = f"{SELECT_JOB} WHERE id >= ? AND id < ? AND +guild_id = ?"
        params: list[Any] = [prefix, prefix + "g", guild_id]
        if user_id is not None:
            sql += " AND +user_id = ?"
            params.append(user_id)
        if statuses is not None:
            sql += f" AND status IN ({marks(statuses)})"
            params.extend(statuses)
        rows = await self._jobs(sql + " ORDER BY created_at DESC LIMIT 1", params)
        return rows[0] if rows else None

    async def member_jobs(
        self, guild_id: int, user_id: int, *, statuses: Sequence[str] | None = None, limit: int = 10, offset: int = 0
    ) -> list[Job]:
        """A member's jobs in one server, newest first."""
        sql = f"{SELECT_JOB} WHERE guild_id = ? AND user_id = ?"
        params: list[Any] = [guild_id, user_id]
        if statuses is not None:
            if set(statuses) <= set(OPEN):  # the literal lets the open jobs' partial index serve, not the history
                sql += f" AND status IN ({OPEN_SQL})"
            sql += f" AND status IN ({marks(statuses)})"
            params.extend(statuses)
        return await self._jobs(sql + " ORDER BY created_at DESC LIMIT ? OFFSET ?", [*params, limit, offset])

    async def count_in(self, statuses: Sequence[str]) -> int:
        """How many jobs are in any of these states."""
        return int(await self._scalar(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks(statuses)})", statuses))

    async def render_times(self, duration: int, resolution: str, *, limit: int = 25) -> list[float]:
        """Seconds from submit to finish of the latest delivered jobs of this shape, newest first."""
        rows = await self._read(
            "SELECT finished_at - submitted_at FROM jobs"
            " WHERE status = 'delivered' AND duration = ? AND resolution = ? AND submitted_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT ?",
            (duration, resolution, limit),
        )
        return [float(row[0]) for row in rows]

    # --- quotas -----------------------------------------------------------------------------------------

    async def quota_settings(self, guild_id: int, defaults: QuotaSettings, db: Any = None) -> QuotaSettings:
        """A server's quota settings, or the bot's defaults when its moderators never changed them."""
        rows = await self._select(
            db,
            "SELECT default_limit, period, member_in_flight, server_in_flight, log_channel_id, confirm_above,"
            " review_channel_id FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        )
        return QuotaSettings(*rows[0]) if rows else defaults

    async def log_channels(self) -> dict[int, int]:
        """Every server's log channel, where its moderators set one (the fleet's alerts go to all of them)."""
        rows = await self._read("SELECT guild_id, log_channel_id FROM guild_settings WHERE log_channel_id IS NOT NULL")
        return {int(guild): int(channel) for guild, channel in rows}

    async def save_quota_settings(self, guild_id: int, settings: QuotaSettings, audit: AuditEntry) -> None:
        """Store a server's quota settings (all of them: callers change one field with `replace`) and the
        moderator's audit row, in one transaction."""
        async with self.transaction() as db:
            await self._insert_audit(db, audit)
            await self._run(
                db,
                "INSERT INTO guild_settings (guild_id, default_limit, period, member_in_flight, server_in_flight,"
                " log_channel_id, confirm_above, review_channel_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id) DO UPDATE SET"
                " default_limit = excluded.default_limit, period = excluded.period,"
                " member_in_flight = excluded.member_in_flight, server_in_flight = excluded.server_in_flight,"
                " log_channel_id = excluded.log_channel_id, confirm_above = excluded.confirm_above,"
                " review_channel_id = excluded.review_channel_id",
                (guild_id, *astuple(settings)),
            )

    async def member_quota(self, guild_id: int, user_id: int, db: Any = None) -> MemberQuota:
        """A member's own override and block, if any."""
        rows = await self._select(
            db,
            "SELECT override, blocked_reason FROM member_quotas WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return MemberQuota(*rows[0]) if rows else MemberQuota(None, None)

    async def save_member_quota(self, guild_id: int, user_id: int, quota: MemberQuota, audit: AuditEntry) -> None:
        """Store a member's override and block (both empty removes the row) and the audit row, in one transaction."""
        async with self.transaction() as db:
            await self._insert_audit(db, audit)
            if quota == MemberQuota(None, None):
                await self._run(db, "DELETE FROM member_quotas WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
                return
            await self._run(
                db,
                "INSERT INTO member_quotas (guild_id, user_id, override, blocked_reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (guild_id, user_id) DO UPDATE SET override = excluded.override,"
                " blocked_reason = excluded.blocked_reason",
                (guild_id, user_id, quota.override, quota.blocked_reason),
            )

    async def role_quotas(
        self, guild_id: int, role_ids: Sequence[int] | None = None, db: Any = None
    ) -> dict[int, int | None]:
        """Limits set on roles (None: unlimited), for the given roles or for every role of the server."""
        sql = "SELECT role_id, quota FROM role_quotas WHERE guild_id = ?"
        params: list[Any] = [guild_id]
        if role_ids is not None:
            among, values = self._any("role_id", role_ids, "bigint")
            sql += f" AND {among}"
            params.extend(values)
        return {row[0]: row[1] for row in await self._select(db, sql, params)}

    async def save_role_quota(
        self, guild_id: int, role_id: int, quota: int | None, audit: AuditEntry, *, remove: bool = False
    ) -> None:
        """Set a role's limit (None: unlimited) or remove its setting, with the audit row, in one transaction."""
        async with self.transaction() as db:
            await self._insert_audit(db, audit)
            if remove:
                await self._run(db, "DELETE FROM role_quotas WHERE guild_id = ? AND role_id = ?", (guild_id, role_id))
                return
            await self._run(
                db,
                "INSERT INTO role_quotas (guild_id, role_id, quota) VALUES (?, ?, ?)"
                " ON CONFLICT (guild_id, role_id) DO UPDATE SET quota = excluded.quota",
                (guild_id, role_id, quota),
            )

    async def add_grant(self, guild_id: int, user_id: int, amount: int, audit: AuditEntry) -> None:
        """Give a member bonus credits for the current period, with the audit row (its moderator, reason and time),
        in one transaction."""
        reason, moderator_id, now = audit.reason or "", audit.moderator_id, audit.created_at
        async with self.transaction() as db:
            await self._insert_audit(db, audit)
            await self._run(
                db,
                "INSERT INTO grants (guild_id, user_id, amount, reason, moderator_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (guild_id, user_id, amount, reason, moderator_id, now),
            )

    async def usage(self, guild_id: int, user_id: int, since: float) -> Usage:
        """A member's credits used, reserved and granted since a time, derived from jobs and grants."""
        return await self._usage(None, guild_id, user_id, since)

    async def _granted(self, db: Any, guild_id: int, user_id: int, since: float) -> int:
        sql = "SELECT COALESCE(SUM(amount), 0) FROM grants WHERE guild_id = ? AND user_id = ? AND created_at >= ?"
        return int(await self._scalar(sql, (guild_id, user_id, since), db) or 0)

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
            # Per server, not per member, because the server's in-flight cap spans members.
            await self._advisory_lock(db, f"{RESERVE_LOCK}{job.guild_id}")
            settings = await self.quota_settings(job.guild_id, defaults, db)
            facts = QuotaFacts(
                settings=settings,
                member=await self.member_quota(job.guild_id, job.user_id, db),
                role_quotas=await self.role_quotas(job.guild_id, role_ids, db),
                usage=await self._usage(db, job.guild_id, job.user_id, window_start(settings.period)),
                server_in_flight=await self._server_in_flight(db, job.guild_id),
            )
            decision = decide(facts)
            if decision.allowed:
                await self.insert_job(db, job)
        return facts, decision

    async def usage_table(self, guild_id: int, since: float, *, limit: int = 15) -> list[UsageRow]:
        """The top members of a server since a time: jobs, seconds of video, credits, billed units."""
        rows = await self._read(
            "SELECT user_id, COUNT(*), COALESCE(SUM(COALESCE(video_seconds, duration)), 0),"
            " COALESCE(SUM(COALESCE(cost_billed, cost_estimate)), 0), COALESCE(SUM(cost_billed), 0)"
            " FROM jobs WHERE guild_id = ? AND created_at >= ?"
            " AND status NOT IN ('failed', 'cancelled')"
            " GROUP BY user_id ORDER BY 4 DESC LIMIT ?",
            (guild_id, since, limit),
        )
        return [UsageRow(int(r[0]), int(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows]

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
        rows = await self._read(sql + " ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset])
        return [AuditEntry(*row) for row in rows]

    async def _insert_audit(self, db: Any, entry: AuditEntry) -> None:
        """One moderator action, written inside the transaction of the change it records."""
        await self._run(
            db,
            "INSERT INTO audit_log (guild_id, moderator_id, action, target_id, before, after, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            astuple(entry),
        )

    # --- images -----------------------------------------------------------------------------------------

    async def put_image(self, data: bytes, mime: str, width: int, height: int) -> str:
        """Keep a first frame (once per content) and return its sha256."""
        # ~5 ms per 10 MB, and hashlib lets go of the GIL meanwhile: a thread keeps the event loop free.
        hashed = await asyncio.to_thread(hashlib.sha256, data) if len(data) > 64 * 1024 else hashlib.sha256(data)
        digest = hashed.hexdigest()
        async with self.transaction() as db:
            await self._run(
                db,
                "INSERT INTO images (sha256, mime, width, height, data) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (sha256) DO NOTHING",
                (digest, mime, width, height, data),
            )
        return digest

    async def get_image(self, sha256: str) -> StoredImage | None:
        """A kept first frame, or None."""
        rows = await self._read("SELECT sha256, mime, width, height, data FROM images WHERE sha256 = ?", (sha256,))
        if not rows:
            return None
        digest, mime, width, height, data = rows[0]
        return StoredImage(digest, mime, width, height, bytes(data))

    # --- member preferences and review --------------------------------------------------------------------

    async def notify_preference(self, user_id: int) -> str:
        """How a member wants to be told their video is done: 'mention' (the default), 'dm' or 'off'."""
        value = await self._scalar("SELECT notify FROM member_prefs WHERE user_id = ?", (user_id,))
        return str(value) if value else "mention"

    async def set_notify_preference(self, user_id: int, mode: str) -> None:
        """Keep a member's choice of 'mention', 'dm' or 'off' (the table refuses anything else)."""
        async with self.transaction() as db:
            await self._run(
                db,
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
        values = [self._param(name, value) for name, value in changes.items()]
        async with self.transaction() as db:
            changed = await self._run(
                db,
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'succeeded'"
                f" AND review_state {self.NULL_SAFE_EQUALS} ?",
                (*values, job_id, from_review),
            )
            return changed == 1
