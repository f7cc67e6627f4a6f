"""Jobs, claims and their look-ups: the statements both databases run alike (see `bot.storage.sql`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bot.core.model import AT_PROVIDER, HOLDING_A_SLOT, OPEN, AuditEntry, Claimed, InFlight, Job, Lease
from bot.storage.sql import (
    CLAIM_ORDER,
    CLAIMED_COLUMNS,
    DISPATCH_LOCK,
    IN_FLIGHT_COLUMNS,
    JOB_COLUMNS,
    NOT_HELD_FOR_REVIEW,
    OPEN_SQL,
    SELECT_JOB,
    QuotaStatements,
    SqlBase,
    checked_update,
    literals,
    marks,
)


class JobStatements(SqlBase):
    """Writing, moving, claiming and finding jobs."""

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
        asking: bool = False,
    ) -> list[Job]:
        """Claim up to `limit` jobs in these states that nobody holds (no lease, or an expired one) for `seconds`,
        each claim bumping the job's lease attempt; the jobs as claimed, oldest first.

        `ids` and `created_before` narrow the jobs; `abandoned` True takes only jobs whose holder let its lease
        expire without releasing it (it stopped in the middle of the work), False only the others. `asking`: the
        claim is to ask the provider about them now, and records that time (`asked_at`) for the whole fleet."""
        sql, params = self._claimable(statuses, origin, now, ids, created_before, abandoned)
        rows = await self._claim(
            sql, params, ", ".join(JOB_COLUMNS), owner=owner, now=now, seconds=seconds, limit=limit, asking=asking
        )
        return sorted((Job(*row) for row in rows), key=lambda job: job.created_at)

    async def claim_in_flight(
        self,
        read: Sequence[tuple[str, int]],
        *,
        owner: str,
        now: float,
        seconds: float,
        limit: int,
        origin: str = "discord",
    ) -> list[Claimed]:
        """Claim jobs at the provider a poll tick read (their id and lease attempt as read) to ask about them now,
        recording that time (`asked_at`); a job claimed by anyone since that read is skipped (it may have been
        asked meanwhile). Returns only what a tick learns from a claim (the rest of each job's narrow row it read
        just before), in no particular order."""
        sql, params = self._claimable(AT_PROVIDER, origin, now, None, None, None)
        unclaimed, read_params = self._unclaimed_since(read)
        rows = await self._claim(
            f"{sql} AND {unclaimed}",
            [*params, *read_params],
            CLAIMED_COLUMNS,
            owner=owner,
            now=now,
            seconds=seconds,
            limit=limit,
            asking=True,
        )
        return [Claimed(*row) for row in rows]

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
        self,
        where: str,
        params: list[Any],
        columns: str,
        *,
        owner: str,
        now: float,
        seconds: float,
        limit: int,
        asking: bool,
    ) -> list[Any]:
        until, until_value = self._lease_until(now, seconds)
        stamp, asked_params = "", list[Any]()
        if asking:  # a claim to ask the provider records the time in the same write: the tick writes no row more
            asked, asked_params = self._lease_now(now)
            stamp = f", asked_at = {asked}"
        async with self.transaction() as db:
            return await self._fetch(
                db,
                f"UPDATE jobs SET lease_owner = ?, lease_until = {until}, lease_attempt = lease_attempt + 1{stamp}"
                f" WHERE id IN (SELECT id FROM jobs WHERE {where} ORDER BY {CLAIM_ORDER}{self.SKIP_LOCKED} LIMIT ?)"
                f" RETURNING {columns}",
                (owner, until_value, *asked_params, *params, limit),
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

    async def in_flight(self, *, origin: str, now: float) -> list[InFlight]:
        """The jobs of one origin at the provider, oldest first, as narrow rows (what a poll tick reads); how long
        ago each was asked about is measured on the lease clock (`now` is SQLite's)."""
        clock, clock_params = self._lease_now(now)
        rows = await self._read(
            f"SELECT {IN_FLIGHT_COLUMNS}, {clock} - asked_at FROM jobs"
            f" WHERE status IN ({literals(AT_PROVIDER)}) AND origin = ? ORDER BY created_at",
            (*clock_params, origin),
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
        self,
        guild_id: int,
        user_id: int | None,
        *,
        statuses: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Job]:
        """A member's jobs in one server (every member's with None), newest first."""
        sql = f"{SELECT_JOB} WHERE guild_id = ?"
        params: list[Any] = [guild_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        if statuses is not None:
            if set(statuses) <= set(OPEN):  # the literal lets the open jobs' partial index serve, not the history
                sql = sql.replace(" FROM jobs ", f" FROM jobs{self.OPEN_JOBS_INDEX} ", 1)
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

    async def decide_review(
        self, job_id: str, from_review: str | None, to_status: str, *, audit: AuditEntry | None = None, **changes: Any
    ) -> bool:
        """Move a `succeeded` job whose review_state is still `from_review` (None: never reviewed), once: False
        when another moderator (or another path) decided first. A moderator's decision comes with its audit row,
        written in the same transaction only when the decision is made."""
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
            if changed == 1 and audit is not None:
                await self._insert_audit(db, audit)
            return changed == 1


class SqlStore(JobStatements, QuotaStatements):
    """Every method the backends share; `bot.storage.sqlite.Store` and `bot.storage.postgres.PgStore` add the hooks."""
