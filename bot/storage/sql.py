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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, fields
from datetime import date, timedelta
from typing import Any, Protocol, TypeVar

from bot.core.model import (
    IN_PROGRESS,
    MUTABLE_JOB_FIELDS,
    OPEN,
    AuditEntry,
    Claimed,
    DuplicateRequest,
    InFlight,
    Job,
    MemberQuota,
    QuotaFacts,
    QuotaSettings,
    StoredImage,
    Usage,
    UsageRow,
    WebSession,
)

JOB_COLUMNS = tuple(f.name for f in fields(Job))
SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
# A poll tick's narrow rows; the last, `asked_ago`, is computed on the lease clock (`SqlBase._lease_now`).
IN_FLIGHT_COLUMNS = ", ".join(InFlight._fields[:-1])
CLAIMED_COLUMNS = ", ".join(Claimed._fields)  # what a poll tick's claim returns


def literals(states: Iterable[str]) -> str:
    """Our own state constants written into the SQL, so the partial indexes on them can serve."""
    return ", ".join(f"'{state}'" for state in states)


IN_PROGRESS_SQL = literals(IN_PROGRESS)
SETTLED_SQL = literals(("succeeded", "delivered", "undeliverable", "rejected"))
OPEN_SQL = literals(OPEN)  # the WHERE of the partial index jobs_member_unsettled
# What a job counts against its member's credits, the rule of `/quota` (`_used_since`, SQLite's running totals):
# settled at the billed amount (else the estimate), in progress at the estimate, failed or cancelled (refusals are
# failed) at nothing.
COUNTED_CREDITS = (
    f"CASE WHEN status IN ({SETTLED_SQL}) THEN COALESCE(cost_billed, cost_estimate)"
    f" WHEN status IN ({IN_PROGRESS_SQL}) THEN cost_estimate ELSE 0 END"
)
EPOCH_DAY = date(1970, 1, 1)
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


class SqlBase:
    """The methods both backends share. A `db` argument is a connection inside a transaction the caller holds;
    None reads outside any transaction (SQLite: on its reader connection)."""

    # `FOR UPDATE SKIP LOCKED` where processes claim at once (PostgreSQL); SQLite's writer is alone.
    SKIP_LOCKED = ""
    # Comparing with a parameter that may be NULL.
    NULL_SAFE_EQUALS = "IS"
    # A member's open jobs from the partial index of open jobs, not the whole history. SQLite, without statistics,
    # ranks the covering usage index above it once the rows are wide, so its backend names the index.
    OPEN_JOBS_INDEX = ""
    # A job's UTC day, as whole days since 1970-01-01 (each dialect rounds down its own way).
    CREATED_DAY = ""

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

    def _lease_now(self, now: float) -> tuple[str, list[Any]]:
        """The SQL and parameters of the lease clock's time now (the fleet's asked times are on it too)."""
        raise NotImplementedError

    def _unclaimed_since(self, read: Sequence[tuple[str, int]]) -> tuple[str, list[Any]]:
        """The job is one of these (id, lease attempt) pairs: nobody claimed it since it was read so."""
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

    async def _insert_audit(self, db: Any, entry: AuditEntry) -> None:
        """One moderator action, written inside the transaction of the change it records."""
        await self._run(
            db,
            "INSERT INTO audit_log (guild_id, moderator_id, action, target_id, before, after, reason, created_at,"
            " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            astuple(entry),
        )

    async def _select(self, db: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await (self._read(sql, params) if db is None else self._fetch(db, sql, params))

    async def _scalar(self, sql: str, params: Sequence[Any] = (), db: Any = None) -> Any:
        rows = await self._select(db, sql, params)
        return rows[0][0] if rows else None

    async def _jobs(self, sql: str, params: Sequence[Any], db: Any = None) -> list[Job]:
        return [Job(*row) for row in await self._select(db, sql, params)]


class QuotaStatements(SqlBase):
    """Quotas, the audit log, first frames and members' preferences: the same SQL on both databases."""

    # --- quotas -----------------------------------------------------------------------------------------

    async def quota_settings(self, guild_id: int, defaults: QuotaSettings, db: Any = None) -> QuotaSettings:
        """A server's quota settings, or the bot's defaults when its moderators never changed them."""
        rows = await self._select(
            db,
            "SELECT default_limit, period, member_in_flight, server_in_flight, log_channel_id, confirm_above,"
            " review_channel_id, sound_default, private_policy FROM guild_settings WHERE guild_id = ?",
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
                " log_channel_id, confirm_above, review_channel_id, sound_default, private_policy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id) DO UPDATE SET"
                " default_limit = excluded.default_limit, period = excluded.period,"
                " member_in_flight = excluded.member_in_flight, server_in_flight = excluded.server_in_flight,"
                " log_channel_id = excluded.log_channel_id, confirm_above = excluded.confirm_above,"
                " review_channel_id = excluded.review_channel_id, sound_default = excluded.sound_default,"
                " private_policy = excluded.private_policy",
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

    async def add_grant(
        self, guild_id: int, user_id: int, amount: int, audit: AuditEntry, request_key: str | None = None
    ) -> None:
        """Give a member bonus credits for the current period, with the audit row (its moderator, reason and time),
        in one transaction. A `request_key` already used grants nothing: DuplicateRequest."""
        reason, moderator_id, now = audit.reason or "", audit.moderator_id, audit.created_at
        async with self.transaction() as db:
            granted = await self._fetch(
                db,
                "INSERT INTO grants (guild_id, user_id, amount, reason, moderator_id, created_at, request_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_key) DO NOTHING RETURNING amount",
                (guild_id, user_id, amount, reason, moderator_id, now, request_key),
            )
            if not granted:  # the same form sent again (a double click): rolled back, nothing written
                raise DuplicateRequest(request_key or "")
            await self._insert_audit(db, audit)

    async def usage(self, guild_id: int, user_id: int, since: float) -> Usage:
        """A member's credits used, reserved and granted since a time, derived from jobs and grants."""
        return await self._usage(None, guild_id, user_id, since)

    async def _used_since(self, db: Any, guild_id: int, user_id: int, since: float) -> tuple[int, int]:
        """Milli-credits used (settled, else estimated) and reserved by a member's jobs made since a time."""
        rows = await self._select(
            db,
            "SELECT"
            f" COALESCE(SUM(CASE WHEN status IN ({SETTLED_SQL}) THEN COALESCE(cost_billed, cost_estimate) END), 0),"
            f" COALESCE(SUM(CASE WHEN status IN ({IN_PROGRESS_SQL}) THEN cost_estimate END), 0)"
            " FROM jobs WHERE guild_id = ? AND user_id = ? AND created_at >= ?",
            (guild_id, user_id, since),
        )
        used, reserved = rows[0] if rows else (0, 0)
        return int(used), int(reserved)  # SUM over BIGINT is NUMERIC in PostgreSQL (a Decimal here)

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

    async def daily_credits(self, guild_id: int, since: float) -> dict[date, int]:
        """Milli-credits a server's jobs made since a time count, per UTC day they were made (days without any left
        out)."""
        rows = await self._read(
            f"SELECT {self.CREATED_DAY}, COALESCE(SUM({COUNTED_CREDITS}), 0) FROM jobs"
            " WHERE guild_id = ? AND created_at >= ? GROUP BY 1",
            (guild_id, since),
        )
        return {EPOCH_DAY + timedelta(days=int(day)): int(credits) for day, credits in rows}

    async def audit_entries(
        self, guild_id: int, *, target_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[AuditEntry]:
        """A server's moderator actions, newest first, optionally about one member."""
        sql = (
            "SELECT guild_id, moderator_id, action, target_id, before, after, reason, created_at, source"
            " FROM audit_log WHERE guild_id = ?"
        )
        params: list[Any] = [guild_id]
        if target_id is not None:
            sql += " AND target_id = ?"
            params.append(target_id)
        rows = await self._read(sql + " ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset])
        return [AuditEntry(*row) for row in rows]

    # --- the dashboard's sessions ------------------------------------------------------------------------

    async def put_web_session(self, session: WebSession) -> None:
        """Write a session (a new one, or one logged in since); the expired ones go at the same time."""
        async with self.transaction() as db:
            await self._run(db, "DELETE FROM web_sessions WHERE expires_at < ? OR id = ?", (time.time(), session.id))
            await self._run(
                db,
                "INSERT INTO web_sessions (id, state, user_id, user_name, locale, created_at, expires_at, guilds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                astuple(session),
            )

    async def web_session(self, session_id: str) -> WebSession | None:
        """A session still valid, by the sha256 of its cookie."""
        rows = await self._read(
            "SELECT id, state, user_id, user_name, locale, created_at, expires_at, guilds FROM web_sessions"
            " WHERE id = ? AND expires_at >= ?",
            [session_id, time.time()],
        )
        return WebSession(*rows[0]) if rows else None

    async def delete_web_session(self, session_id: str) -> None:
        """End a session (log-out, or a login that replaced it)."""
        async with self.transaction() as db:
            await self._run(db, "DELETE FROM web_sessions WHERE id = ?", (session_id,))

    async def member_quota_rows(self, guild_id: int) -> dict[int, MemberQuota]:
        """Every member of a server with their own limit or a block."""
        rows = await self._read(
            "SELECT user_id, override, blocked_reason FROM member_quotas WHERE guild_id = ?", [guild_id]
        )
        return {int(row[0]): MemberQuota(row[1], row[2]) for row in rows}

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
