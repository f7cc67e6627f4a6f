"""The one interface the services use to keep jobs and quotas, and the choice of backend behind it.

`bot.storage.sqlite.Store` (SQLite, the embedded default for one process) and `bot.storage.postgres.PgStore`
(PostgreSQL, for several processes) both implement `Storage`; nothing outside them knows which one is in use. The
contract tests (`tests/storage/test_store_contract.py`) run the same assertions against both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from bot.core.model import (
    AuditEntry,
    Claimed,
    InFlight,
    Job,
    Lease,
    MemberQuota,
    QuotaFacts,
    QuotaSettings,
    StoredImage,
    Usage,
    UsageRow,
    WebSession,
)
from bot.storage.sqlite import DecisionT, Store, StoreUnavailable


class Storage(Protocol):
    """Jobs, first frames, quotas and the audit log; every state change is guarded by the state it leaves."""

    async def close(self) -> None: ...

    async def add_job(self, job: Job) -> None: ...

    async def transition(
        self,
        job_id: str,
        from_status: str | Iterable[str],
        to_status: str,
        *,
        lease: Lease | None = None,
        **changes: Any,
    ) -> bool: ...

    async def update_job(
        self, job_id: str, in_status: str | Iterable[str], *, lease: Lease | None = None, **changes: Any
    ) -> bool: ...

    # Claims: each process takes the background work it does (see docs/fleet.md). A lease lasts
    # `seconds`; `now` is the process's clock, which SQLite (one process) uses for leases. PostgreSQL sets and
    # compares leases with the database's clock instead, so a process whose clock is ahead cannot take live work.
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
    ) -> list[Job]: ...

    async def claim_in_flight(
        self,
        read: Sequence[tuple[str, int]],
        *,
        owner: str,
        now: float,
        seconds: float,
        limit: int,
        origin: str = "discord",
    ) -> list[Claimed]: ...

    async def claim_queued(
        self,
        *,
        capacity: int,
        owner: str,
        now: float,
        seconds: float,
        origin: str = "discord",
        order: Callable[[list[Job]], list[Job]],
    ) -> list[Job]: ...

    async def take_slot(self, job_id: str, lease: Lease, *, capacity: int, now: float, seconds: float) -> bool: ...

    async def renew_lease(self, job_id: str, lease: Lease, *, now: float, seconds: float) -> bool: ...

    async def release_leases(self, held: Sequence[tuple[str, Lease]], now: float) -> None: ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def job_by_task(self, task_id: str) -> Job | None: ...

    async def jobs_by_tasks(self, task_ids: Sequence[str]) -> list[Job]: ...

    async def jobs_in(self, statuses: Sequence[str], *, origin: str | None = None) -> list[Job]: ...

    async def in_flight(self, *, origin: str, now: float) -> list[InFlight]: ...

    async def find_job(
        self, guild_id: int, prefix: str, *, user_id: int | None = None, statuses: Sequence[str] | None = None
    ) -> Job | None: ...

    async def member_jobs(
        self,
        guild_id: int,
        user_id: int | None,
        *,
        statuses: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Job]: ...

    async def count_by_status(self) -> dict[str, int]: ...

    async def credits_used(self, guild_id: int, since: float) -> int: ...

    async def count_in(self, statuses: Sequence[str]) -> int: ...

    async def count_member_jobs(self, guild_id: int, user_id: int) -> int: ...

    async def render_times(self, duration: int, resolution: str, *, limit: int = 25) -> list[float]: ...

    async def quota_settings(self, guild_id: int, defaults: QuotaSettings) -> QuotaSettings: ...

    async def log_channels(self) -> dict[int, int]: ...

    async def save_quota_settings(self, guild_id: int, settings: QuotaSettings, audit: AuditEntry) -> None: ...

    async def member_quota(self, guild_id: int, user_id: int) -> MemberQuota: ...

    async def save_member_quota(self, guild_id: int, user_id: int, quota: MemberQuota, audit: AuditEntry) -> None: ...

    async def role_quotas(self, guild_id: int, role_ids: Sequence[int] | None = None) -> dict[int, int | None]: ...

    async def save_role_quota(
        self, guild_id: int, role_id: int, quota: int | None, audit: AuditEntry, *, remove: bool = False
    ) -> None: ...

    async def add_grant(
        self, guild_id: int, user_id: int, amount: int, audit: AuditEntry, request_key: str | None = None
    ) -> None: ...

    async def usage(self, guild_id: int, user_id: int, since: float) -> Usage: ...

    async def reserve_job(
        self,
        job: Job,
        *,
        role_ids: Sequence[int],
        defaults: QuotaSettings,
        window_start: Callable[[str], float],
        decide: Callable[[QuotaFacts], DecisionT],
    ) -> tuple[QuotaFacts, DecisionT]: ...

    async def usage_table(self, guild_id: int, since: float, *, limit: int = 15) -> list[UsageRow]: ...

    async def daily_credits(self, guild_id: int, since: float) -> dict[date, int]: ...

    async def audit_entries(
        self, guild_id: int, *, target_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[AuditEntry]: ...

    async def put_image(self, data: bytes, mime: str, width: int, height: int) -> str: ...

    async def get_image(self, sha256: str) -> StoredImage | None: ...

    async def backup(self, target: Path | str) -> None: ...

    async def notify_preference(self, user_id: int) -> str: ...

    async def set_notify_preference(self, user_id: int, mode: str) -> None: ...

    async def decide_review(
        self, job_id: str, from_review: str | None, to_status: str, *, audit: AuditEntry | None = None, **changes: Any
    ) -> bool: ...

    async def member_quota_rows(self, guild_id: int) -> dict[int, MemberQuota]: ...

    async def put_web_session(self, session: WebSession) -> None: ...

    async def web_session(self, session_id: str) -> WebSession | None: ...

    async def delete_web_session(self, session_id: str) -> None: ...


def is_postgres(database: str) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL; anything else is a SQLite path."""
    return database.startswith(("postgresql://", "postgres://"))


async def open_storage(database: str, *, single_instance: bool = False) -> Storage:
    """Open the backend `database` names: a PostgreSQL URL, or a SQLite file path (`sqlite:///path` too)."""
    if is_postgres(database):
        try:
            from bot.storage.postgres import PgStore  # psycopg is only needed by those who use PostgreSQL
        except ImportError:
            raise StoreUnavailable("PostgreSQL needs its driver: pip install -e '.[postgres]'") from None
        return await PgStore.open(database)  # several bots may share it: `single_instance` is SQLite's
    return await Store.open(database.removeprefix("sqlite://"), single_instance=single_instance)
