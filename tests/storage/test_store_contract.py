"""One contract, two backends: every test runs on SQLite (`Store`) and on PostgreSQL (`PgStore`) alike."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.core.credits import CreditService, QuotaRefused
from bot.core.jobs import JobRequest, JobService
from bot.core.model import OPEN, DuplicateRequest, Lease, WebSession
from bot.storage.sqlite import MIGRATIONS, AuditEntry, Job, MemberQuota, QuotaSettings, Store, StoreUnavailable, Usage
from tests.conftest import FakeClock

pytest_plugins = ["tests.postgres"]

GUILD, OTHER_GUILD, ALICE, BOB, MOD = 100, 200, 1, 2, 9
DAY = 86400
BIG = 2**63 - 1  # the largest id a signed 64-bit column holds; Discord snowflakes are far below it
DEFAULTS = QuotaSettings(default_limit=20_000, period="week", member_in_flight=2, server_in_flight=10)

BLANK = Job(
    id="j1", guild_id=GUILD, channel_id=2, user_id=ALICE, kind="text", prompt="a cat", duration=5,
    resolution="720p", aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None, status="reserved",
    provider_task_id=None, provider_status=None, error=None, video_url=None, video_seconds=None, billed_amount=None,
    cost_estimate=4000, cost_billed=None, attachment_size_limit=None, message_id=None, thread_id=None,
    status_message_id=None, result_message_id=None, attempts=0, delivery_attempts=0, created_at=100.0,
    submitted_at=None, finished_at=None, delivered_at=None, updated_at=100.0,
)  # fmt: skip

AnyStore = Any  # Store or PgStore: the same methods


@dataclass
class Backend:
    """Opens handles on one database of one kind, and closes them all after the test."""

    name: str
    opener: Callable[..., Awaitable[AnyStore]]
    integrity_error: type[Exception]
    opened: list[AnyStore] = field(default_factory=list)

    async def open(self, **options: Any) -> AnyStore:
        store = await self.opener(**options)
        self.opened.append(store)
        return store

    async def close(self, store: AnyStore) -> None:
        self.opened.remove(store)
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "bot.sqlite3"
        chosen = Backend("sqlite", lambda **kw: Store.open(path, **kw), sqlite3.IntegrityError)
    else:
        psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        from bot.storage.interface import open_storage

        dsn: str = request.getfixturevalue("postgres_dsn")
        chosen = Backend("postgres", lambda **kw: open_storage(dsn, **kw), psycopg.IntegrityError)
    try:
        yield chosen
    finally:
        for store in chosen.opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> AnyStore:
    return await backend.open()


@pytest.fixture
def credits(store: AnyStore, clock: FakeClock) -> CreditService:
    return CreditService(store, DEFAULTS, clock=clock)


async def schema_version(backend: Backend, store: AnyStore) -> int:
    if backend.name == "sqlite":
        return int(await store._scalar("PRAGMA user_version"))
    return int(await store.schema_version())


def job(n: int, clock: FakeClock, user: int = ALICE, guild: int = GUILD, cost: int = 4000) -> Job:
    return replace(BLANK, id=f"job-{guild}-{user}-{n}", guild_id=guild, user_id=user, cost_estimate=cost,
                   created_at=clock(), updated_at=clock())  # fmt: skip


# --- schema -------------------------------------------------------------------------------------------------


async def test_migrations_apply_and_reopening_is_idempotent(backend: Backend) -> None:
    store = await backend.open()
    assert await schema_version(backend, store) == len(MIGRATIONS)
    await store.add_job(BLANK)
    await backend.close(store)
    again = await backend.open()
    assert await schema_version(backend, again) == len(MIGRATIONS)
    assert await again.get_job("j1") == BLANK


async def test_two_handles_opening_a_new_database_at_once_both_work(backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("one SQLite file serves one process; concurrent first opens are a PostgreSQL concern")
    first, second = await asyncio.gather(backend.open(), backend.open())
    assert await schema_version(backend, first) == await schema_version(backend, second) == len(MIGRATIONS)


async def test_a_database_from_a_newer_bot_is_refused(backend: Backend) -> None:
    store = await backend.open()
    async with store.transaction() as db:
        if backend.name == "sqlite":
            await db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        else:
            await db.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
    await backend.close(store)
    with pytest.raises(RuntimeError, match="newer"):
        await backend.open()


async def test_foreign_keys_are_enforced(backend: Backend, store: AnyStore) -> None:
    with pytest.raises(backend.integrity_error):
        await store.add_job(replace(BLANK, image_sha256="no-such-image"))


# --- jobs ---------------------------------------------------------------------------------------------------


async def test_every_job_field_round_trips_with_64_bit_ids(store: AnyStore) -> None:
    digest = await store.put_image(b"\x89PNG\x00\x01", "image/png", 1280, 720)
    full = Job(
        id="full", guild_id=BIG, channel_id=BIG - 1, user_id=2**53 + 1, kind="image", prompt="ünïcode 🦊 'quotes'",
        duration=10, resolution="1080p", aspect_ratio="9:16", image_sha256=digest, image_url="https://x/y.png",
        image_source="attachment", status="delivered", provider_task_id="task-1", provider_status="succeed",
        error="none", video_url="https://cdn/v.mp4", video_seconds=10.041666666666666, billed_amount="12.5",
        cost_estimate=12_000, cost_billed=12_500, attachment_size_limit=26_214_400, message_id=BIG - 2,
        thread_id=BIG - 3, status_message_id=BIG - 4, result_message_id=BIG - 5, attempts=2, delivery_attempts=3,
        created_at=1_800_000_000.123456, submitted_at=1_800_000_001.5, finished_at=1_800_000_050.25,
        delivered_at=1_800_000_051.0, updated_at=1_800_000_051.0, origin="cli", frame_url="https://x/frame.jpg",
        uncertain_since=1_800_000_002.75, lookups=4, cancel_requested=True,
    )  # fmt: skip
    await store.add_job(full)
    assert await store.get_job("full") == full
    assert await store.job_by_task("task-1") == full
    assert await store.get_job("missing") is None and await store.job_by_task("missing") is None
    assert await store.jobs_by_tasks(["missing", "task-1", "task-1"]) == [full]  # one query for many ids
    assert await store.jobs_by_tasks([]) == []
    assert await store.member_jobs(BIG, 2**53 + 1) == [full]


async def test_a_transition_happens_once_when_coroutines_race(store: AnyStore) -> None:
    await store.add_job(BLANK)
    results = await asyncio.gather(
        *(store.transition("j1", "reserved", "submitted", provider_task_id=str(n), updated_at=101.0) for n in range(10))
    )
    assert results.count(True) == 1
    moved = await store.get_job("j1")
    assert moved is not None and moved.status == "submitted"
    assert not await store.transition("j1", "reserved", "failed", updated_at=102.0)
    assert await store.transition("j1", ("queued", "submitted"), "processing", updated_at=103.0)


async def test_updates_are_guarded_and_refuse_fixed_columns(store: AnyStore) -> None:
    await store.add_job(BLANK)
    with pytest.raises(ValueError, match="not a mutable"):
        await store.update_job("j1", "reserved", user_id=9, updated_at=1.0)
    with pytest.raises(ValueError, match="updated_at"):
        await store.update_job("j1", "reserved", attempts=1)
    assert await store.update_job("j1", "reserved", cancel_requested=True, attempts=1, updated_at=2.0)
    assert await store.update_job("j1", "reserved", cancel_requested=0, updated_at=2.5)  # SQLite-style flag
    assert not await store.update_job("j1", "submitted", attempts=5, updated_at=3.0)
    updated = await store.get_job("j1")
    assert updated is not None and (updated.attempts, updated.cancel_requested, updated.updated_at) == (1, 0, 2.5)


async def test_jobs_in_are_oldest_first_and_filtered_by_origin(store: AnyStore) -> None:
    await store.add_job(replace(BLANK, id="late", created_at=300.0, status="queued"))
    await store.add_job(replace(BLANK, id="cli", created_at=50.0, status="submitted", origin="cli"))
    await store.add_job(replace(BLANK, id="early", created_at=10.0, status="submitted"))
    await store.add_job(replace(BLANK, id="done", created_at=5.0, status="delivered"))
    assert [j.id for j in await store.jobs_in(("queued", "submitted"))] == ["early", "cli", "late"]
    assert [j.id for j in await store.jobs_in(("queued", "submitted"), origin="discord")] == ["early", "late"]
    assert [j.id for j in await store.jobs_in(["submitted"], origin="cli")] == ["cli"]
    assert await store.jobs_in(()) == []
    assert await store.count_in(("queued", "submitted")) == 3
    assert await store.count_by_status() == {"queued": 1, "submitted": 2, "delivered": 1}


async def test_member_jobs_page_newest_first_within_one_server(store: AnyStore) -> None:
    for n in range(5):
        await store.add_job(replace(BLANK, id=f"j{n}", created_at=100.0 + n, status="failed" if n % 2 else "queued"))
    await store.add_job(replace(BLANK, id="other-guild", guild_id=OTHER_GUILD))
    await store.add_job(replace(BLANK, id="other-user", user_id=BOB))
    assert [j.id for j in await store.member_jobs(GUILD, ALICE)] == ["j4", "j3", "j2", "j1", "j0"]
    assert [j.id for j in await store.member_jobs(GUILD, ALICE, limit=2, offset=1)] == ["j3", "j2"]
    assert [j.id for j in await store.member_jobs(GUILD, ALICE, statuses=["queued"])] == ["j4", "j2", "j0"]
    assert await store.member_jobs(GUILD, ALICE, offset=10) == []
    assert await store.count_member_jobs(GUILD, ALICE) == 5


async def test_credits_used_and_render_times(store: AnyStore) -> None:
    await store.add_job(replace(BLANK, id="a", created_at=100.0, cost_estimate=4000, cost_billed=3500))
    await store.add_job(replace(BLANK, id="b", created_at=100.0, cost_estimate=2000, status="failed"))
    await store.add_job(replace(BLANK, id="c", created_at=10.0, cost_estimate=8000))
    for n, (start, end) in enumerate([(0.0, 40.0), (10.0, 70.5), (20.0, 30.0)]):
        await store.add_job(
            replace(BLANK, id=f"d{n}", guild_id=OTHER_GUILD, status="delivered", submitted_at=start, finished_at=end)
        )
    await store.add_job(replace(BLANK, id="wrong-shape", status="delivered", duration=10, submitted_at=0.0,
                                finished_at=5.0))  # fmt: skip
    assert await store.credits_used(GUILD, 50.0) == 3500 + 4000  # "a" billed, "wrong-shape" estimated
    assert await store.credits_used(GUILD, 0.0) == 3500 + 4000 + 8000
    assert await store.render_times(5, "720p") == [60.5, 40.0, 10.0]
    assert await store.render_times(5, "720p", limit=1) == [60.5]


# --- quotas -------------------------------------------------------------------------------------------------


def audit(guild_id: int = GUILD, *, reason: str | None = None, at: float = 1.0) -> AuditEntry:
    """The audit row a moderator's change is written with."""
    return AuditEntry(guild_id, MOD, "set", None, "before", "after", reason, at)


async def test_quota_settings_member_and_role_quotas_round_trip(store: AnyStore) -> None:
    assert await store.quota_settings(GUILD, DEFAULTS) == DEFAULTS
    custom = QuotaSettings(default_limit=2**40, period="month", member_in_flight=3, server_in_flight=7,
                           log_channel_id=BIG)  # fmt: skip
    await store.save_quota_settings(BIG, custom, audit(BIG))
    await store.save_quota_settings(BIG, replace(custom, period="day"), audit(BIG))
    assert await store.quota_settings(BIG, DEFAULTS) == replace(custom, period="day")
    assert await store.quota_settings(GUILD, DEFAULTS) == DEFAULTS
    await store.save_quota_settings(GUILD, replace(DEFAULTS, log_channel_id=None), audit())
    assert await store.log_channels() == {BIG: BIG}  # only servers that set one

    assert await store.member_quota(GUILD, ALICE) == MemberQuota(None, None)
    await store.save_member_quota(GUILD, ALICE, MemberQuota(5_000, None), audit())
    await store.save_member_quota(GUILD, ALICE, MemberQuota(5_000, "spam"), audit())
    assert await store.member_quota(GUILD, ALICE) == MemberQuota(5_000, "spam")
    await store.save_member_quota(GUILD, ALICE, MemberQuota(None, None), audit())
    assert await store.member_quota(GUILD, ALICE) == MemberQuota(None, None)

    await store.save_role_quota(GUILD, BIG, 30_000, audit())
    await store.save_role_quota(GUILD, 8, None, audit())
    await store.save_role_quota(OTHER_GUILD, 8, 1, audit(OTHER_GUILD))
    assert await store.role_quotas(GUILD) == {BIG: 30_000, 8: None}
    assert await store.role_quotas(GUILD, [8, 99]) == {8: None}
    assert await store.role_quotas(GUILD, []) == {}
    await store.save_role_quota(GUILD, 8, None, audit(), remove=True)
    assert await store.role_quotas(GUILD) == {BIG: 30_000}


async def test_usage_counts_jobs_by_state_and_grants_since_a_time(store: AnyStore) -> None:
    states = {"reserved": 1000, "processing": 2000, "succeeded": 4000, "delivered": 8000, "failed": 16000}
    for status, cost in states.items():
        await store.add_job(replace(BLANK, id=status, status=status, cost_estimate=cost, created_at=100.0))
    await store.add_job(replace(BLANK, id="billed", status="delivered", cost_estimate=1, cost_billed=32000))
    await store.add_job(replace(BLANK, id="old", status="queued", cost_estimate=64000, created_at=1.0))
    await store.add_grant(GUILD, ALICE, 500, audit(reason="contest", at=100.0))
    await store.add_grant(GUILD, ALICE, 700, audit(reason="old", at=1.0))
    await store.add_grant(OTHER_GUILD, ALICE, 900, audit(OTHER_GUILD, reason="elsewhere", at=100.0))
    usage = await store.usage(GUILD, ALICE, 50.0)
    assert usage == Usage(used=4000 + 8000 + 32000, reserved=3000, granted=500, in_flight=3)
    assert await store.usage(GUILD, BOB, 0.0) == Usage(0, 0, 0, 0)


async def test_usage_table_ranks_members_by_credits(store: AnyStore) -> None:
    await store.add_job(replace(BLANK, id="a1", user_id=ALICE, cost_estimate=4000, video_seconds=5.5))
    await store.add_job(replace(BLANK, id="a2", user_id=ALICE, cost_estimate=4000, status="failed"))
    await store.add_job(replace(BLANK, id="b1", user_id=BIG, cost_estimate=4000, cost_billed=9000, duration=10))
    await store.add_job(replace(BLANK, id="b2", user_id=BIG, cost_estimate=1000, created_at=1.0))
    rows = await store.usage_table(GUILD, 50.0)
    assert [(r.user_id, r.jobs, r.seconds, r.credits, r.billed) for r in rows] == [
        (BIG, 1, 10.0, 9000, 9000),
        (ALICE, 1, 5.5, 4000, 0),
    ]
    assert len(await store.usage_table(GUILD, 50.0, limit=1)) == 1


async def test_daily_credits_count_each_utc_day_as_quota_does(store: AnyStore, credits: CreditService) -> None:
    today = datetime.fromtimestamp(credits.clock(), UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight = today.timestamp()
    first = midnight - 29 * DAY  # the window's first day starts at its midnight, UTC
    jobs = [  # (id, status, estimate, billed, created_at, guild, user)
        ("billed", "delivered", 4000, 4500, midnight + 60, GUILD, ALICE),
        ("rendering", "processing", 2000, None, midnight + 120, GUILD, ALICE),
        ("bob", "reserved", 1000, None, midnight + 180, GUILD, BOB),
        ("failed", "failed", 16000, None, midnight + 240, GUILD, ALICE),
        ("cancelled", "cancelled", 8000, None, midnight + 300, GUILD, ALICE),
        ("elsewhere", "delivered", 32000, None, midnight + 360, OTHER_GUILD, ALICE),
        ("late-yesterday", "succeeded", 3000, None, midnight - 0.1, GUILD, ALICE),  # not rounded up to today
        ("rejected", "rejected", 9000, 1000, midnight - 3600, GUILD, BOB),
        ("queued", "queued", 500, None, midnight - 7200, GUILD, ALICE),
        ("first-day", "undeliverable", 7000, None, first, GUILD, ALICE),
        ("too-old", "delivered", 64000, None, first - 0.1, GUILD, ALICE),
    ]
    for job_id, status, estimate, billed, created, guild, user in jobs:
        job = replace(BLANK, id=job_id, status=status, cost_estimate=estimate, cost_billed=billed, created_at=created)
        await store.add_job(replace(job, guild_id=guild, user_id=user))
    days = await credits.daily_credits(GUILD)
    assert [d.day for d in days] == [(today - timedelta(days=29 - n)).date() for n in range(30)]
    assert {d.day: d.credits for d in days if d.credits} == {
        today.date(): 4.5 + 2.0 + 1.0,
        (today - timedelta(days=1)).date(): 3.0 + 1.0 + 0.5,
        (today - timedelta(days=29)).date(): 7.0,
    }
    assert [d.credits for d in await credits.daily_credits(GUILD, days=1)] == [7.5]
    assert all(d.credits == 0 for d in await credits.daily_credits(GUILD + 1))


async def test_audit_entries_are_newest_first_and_filtered(store: AnyStore) -> None:
    entries = [AuditEntry(GUILD, MOD, f"act{n}", ALICE if n % 2 else BIG, "b", "a", None, 100.0 + n) for n in range(5)]
    for entry in entries:
        await store.save_member_quota(GUILD, entry.target_id or 0, MemberQuota(1, None), entry)
    await store.save_member_quota(OTHER_GUILD, 5, MemberQuota(1, None), audit(OTHER_GUILD, reason="why"))
    assert await store.audit_entries(GUILD) == entries[::-1]
    assert await store.audit_entries(GUILD, target_id=ALICE) == [entries[3], entries[1]]
    assert await store.audit_entries(GUILD, limit=2, offset=1) == [entries[3], entries[2]]
    assert [e.reason for e in await store.audit_entries(OTHER_GUILD)] == ["why"]


# --- images and backup --------------------------------------------------------------------------------------


async def test_images_are_kept_once_per_content(store: AnyStore) -> None:
    data = bytes(range(256)) * 10
    first = await store.put_image(data, "image/png", 400, 300)
    again = await store.put_image(data, "image/jpeg", 1, 1)  # the same bytes: the first row stays
    assert first == again
    stored = await store.get_image(first)
    assert stored is not None and stored.data == data
    assert (stored.mime, stored.width, stored.height) == ("image/png", 400, 300)
    assert await store.get_image("0" * 64) is None


async def test_backup_is_a_sqlite_copy_that_store_opens(store: AnyStore, tmp_path: Path, clock: FakeClock) -> None:
    digest = await store.put_image(b"frame", "image/png", 2, 2)
    await store.add_job(replace(BLANK, image_sha256=digest, guild_id=BIG, cancel_requested=True))
    await store.add_grant(BIG, ALICE, 500, AuditEntry(BIG, MOD, "grant", ALICE, "0", "0.5", "contest", 100.0))
    await store.backup(tmp_path / "backups" / "copy.sqlite3")
    copy = await Store.open(tmp_path / "backups" / "copy.sqlite3")
    try:
        assert await copy.get_job("j1") == replace(BLANK, image_sha256=digest, guild_id=BIG, cancel_requested=True)
        assert (await copy.get_image(digest)) == (await store.get_image(digest))
        assert await copy.usage(BIG, ALICE, 0.0) == await store.usage(BIG, ALICE, 0.0)
        assert await copy.audit_entries(BIG) == await store.audit_entries(BIG)
    finally:
        await copy.close()


# --- reservations -------------------------------------------------------------------------------------------


async def test_fifty_concurrent_commands_with_room_for_five_start_exactly_five(
    store: AnyStore, credits: CreditService, clock: FakeClock
) -> None:
    await credits.set_caps(GUILD, MOD, member=100, server=100)
    await credits.set_default(GUILD, MOD, limit=20_000, period="week")  # 5 jobs of 4 credits
    results = await asyncio.gather(*(credits.reserve(job(n, clock), ()) for n in range(50)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, QuotaRefused)]
    assert results.count(None) == 5 and len(refused) == 45
    assert "you have 0 credits" in str(refused[0])
    status = await credits.status(GUILD, ALICE, ())
    assert (status.reserved, status.used, status.remaining, status.in_flight) == (20_000, 0, 0, 5)
    assert await store.count_member_jobs(GUILD, ALICE) == 5


async def test_reservation_decisions_follow_block_caps_and_grants(
    store: AnyStore, credits: CreditService, clock: FakeClock
) -> None:
    await credits.block(GUILD, MOD, ALICE, "too many requests")
    with pytest.raises(QuotaRefused, match="too many requests"):
        await credits.reserve(job(0, clock), ())
    assert await store.count_member_jobs(GUILD, ALICE) == 0
    await credits.unblock(GUILD, MOD, ALICE)
    await credits.reserve(job(1, clock), ())
    await credits.reserve(job(2, clock), ())
    with pytest.raises(QuotaRefused, match="2 videos in progress"):
        await credits.reserve(job(3, clock), ())
    await credits.set_caps(GUILD, MOD, member=5, server=3)
    await credits.reserve(job(4, clock, user=BOB), ())
    with pytest.raises(QuotaRefused, match="This server already has 3"):
        await credits.reserve(job(5, clock, user=BIG), ())
    await credits.set_caps(GUILD, MOD, member=5, server=10)
    await credits.set_role(GUILD, MOD, BIG, 0)  # a role with no credits at all...
    with pytest.raises(QuotaRefused, match="needs 4 credits"):
        await credits.reserve(job(6, clock, user=BIG), (BIG,))
    await credits.grant(GUILD, MOD, BIG, 4_000, "contest")  # ...until a moderator grants some
    await credits.reserve(job(7, clock, user=BIG), (BIG,))


async def _reserve_across_two_instances(
    backend: Backend, clock: FakeClock, count: int, users: Callable[[int], int], *, member: int, server: int, limit: int
) -> list[BaseException | None]:
    first, second = await backend.open(), await backend.open()
    services = [CreditService(s, DEFAULTS, clock=clock) for s in (first, second)]
    await services[0].set_caps(GUILD, MOD, member=member, server=server)
    await services[0].set_default(GUILD, MOD, limit=limit, period="week")
    return await asyncio.gather(
        *(services[n % 2].reserve(job(n, clock, user=users(n)), ()) for n in range(count)), return_exceptions=True
    )


async def test_two_processes_with_room_for_one_job_start_exactly_one(backend: Backend, clock: FakeClock) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite serves one bot process (Store.open(single_instance=True) refuses a second)")
    results = await _reserve_across_two_instances(
        backend, clock, 40, lambda n: ALICE, member=100, server=100, limit=4_000
    )
    assert results.count(None) == 1, results
    assert all(isinstance(r, QuotaRefused) for r in results if r is not None)


def hold_the_first_two_counts_of_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two reservations to count their server's jobs in flight each wait (a second at most) until both have
    counted, before either writes its job: a race that a lock too narrow would lose is then lost every time."""
    from bot.storage.postgres import PgStore

    counting = PgStore._server_in_flight
    both_counted = asyncio.Event()
    counts = 0

    async def held(self: PgStore, db: Any, guild_id: int) -> int:
        nonlocal counts
        count = await counting(self, db, guild_id)
        counts += 1
        if counts == 2:
            both_counted.set()
        elif counts == 1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both_counted.wait(), 1.0)  # the server's lock keeps the second one out
        return count

    monkeypatch.setattr(PgStore, "_server_in_flight", held)


async def test_two_processes_respect_the_server_cap_across_members(
    backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite serves one bot process (Store.open(single_instance=True) refuses a second)")
    hold_the_first_two_counts_of_the_server(monkeypatch)
    results = await _reserve_across_two_instances(
        backend, clock, 40, lambda n: 1000 + n, member=100, server=1, limit=1_000_000
    )
    assert results.count(None) == 1, results
    assert all(isinstance(r, QuotaRefused) and "server already has 1" in str(r) for r in results if r is not None)


async def test_single_instance_refuses_a_second_bot_process_on_sqlite_only(backend: Backend) -> None:
    first = await backend.open(single_instance=True)
    if backend.name == "postgres":  # several bots share PostgreSQL: they claim their background work
        await backend.open(single_instance=True)
        return
    with pytest.raises(StoreUnavailable, match="another bot process"):
        await backend.open(single_instance=True)
    await backend.open()  # tools (backup, generate) open without the claim
    await backend.close(first)
    await backend.open(single_instance=True)


async def test_an_unreachable_database_is_a_one_line_store_unavailable(backend: Backend, tmp_path: Path) -> None:
    if backend.name == "sqlite":
        target: Any = tmp_path  # a folder, not a database file
        opener: Any = Store.open
    else:
        from bot.storage.postgres import PgStore

        target, opener = f"postgresql://postgres:secret@/nosuchdb?host={tmp_path}", PgStore.open
    with pytest.raises(StoreUnavailable) as caught:
        await opener(target)
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)


# --- claims and leases --------------------------------------------------------------------------------------


async def add_jobs(store: AnyStore, count: int, status: str = "submitted", **fields: Any) -> list[str]:
    ids = [f"c{n:02}" for n in range(count)]
    for n, job_id in enumerate(ids):
        await store.add_job(replace(BLANK, id=job_id, status=status, created_at=100.0 + n, **fields))
    return ids


async def expire(store: AnyStore, *job_ids: str) -> None:
    """Let these jobs' leases run out (as time passing would), their holders unchanged."""
    for job_id in job_ids:
        assert await store.update_job(job_id, OPEN, lease_until=0.0, updated_at=time.time())


def near(value: float | None, expected: float) -> bool:
    """A lease time set by the store's clock (the database's, on PostgreSQL): within a few seconds of ours."""
    return value is not None and abs(value - expected) < 5


async def test_a_claim_takes_at_most_n_jobs_in_its_states_and_skips_leased_ones(store: AnyStore) -> None:
    ids = await add_jobs(store, 5)
    await store.add_job(replace(BLANK, id="queued", status="queued"))
    await store.add_job(replace(BLANK, id="cli", status="submitted", origin="cli"))
    now = time.time()
    first = await store.claim_jobs(("submitted",), owner="a", now=now, seconds=60.0, limit=3)
    assert [j.id for j in first] == ids[:3]  # the oldest
    assert {(j.lease_owner, j.lease_attempt) for j in first} == {("a", 1)}
    assert all(near(j.lease_until, now + 60) for j in first)
    second = await store.claim_jobs(("submitted",), owner="b", now=now, seconds=60.0, limit=10)
    assert [j.id for j in second] == ids[3:]  # the leased ones are skipped, other states and origins untouched
    assert await store.claim_jobs(("submitted",), owner="c", now=now, seconds=60.0, limit=10) == []
    picked = await store.claim_jobs(("submitted",), owner="cli", now=now, seconds=60.0, limit=5, origin="cli")
    assert [j.id for j in picked] == ["cli"]
    chosen = await store.claim_jobs(("queued",), owner="c", now=now, seconds=60.0, limit=5, ids=["queued", "x"])
    assert [j.id for j in chosen] == ["queued"]
    assert await store.claim_jobs(("submitted",), owner="c", now=now, seconds=60.0, limit=5, ids=[]) == []


async def test_a_poll_reads_and_claims_narrow_rows_of_the_jobs_at_the_provider_only(store: AnyStore) -> None:
    [first, second] = await add_jobs(store, 2)
    await store.update_job(second, "submitted", status="processing", provider_task_id="t2", updated_at=150.0)
    for job_id, status, origin in (("queued", "queued", "discord"), ("done", "succeeded", "discord"),
                                   ("cli", "processing", "cli")):  # fmt: skip
        await store.add_job(replace(BLANK, id=job_id, status=status, origin=origin, created_at=90.0))
    now = time.time()
    seen = await store.in_flight(origin="discord", now=now)
    assert [
        (j.id, j.status, j.provider_task_id, j.duration, j.resolution, j.created_at, j.asked_ago) for j in seen
    ] == [
        (first, "submitted", None, 5, "720p", 100.0, None),
        (second, "processing", "t2", 5, "720p", 101.0, None),
    ]  # oldest first; other states and origins left out; never asked
    everything = [(j.id, j.lease_attempt) for j in seen] + [("queued", 0), ("done", 0), ("cli", 0), ("x", 0)]
    claimed = await store.claim_in_flight(everything, owner="a", now=now, seconds=60.0, limit=10)
    assert sorted(claimed) == [(first, "submitted", None, "a", 1), (second, "processing", "t2", "a", 1)]
    assert {(j.id, j.lease_owner) for j in await store.in_flight(origin="discord", now=now)} == {
        (first, "a"),
        (second, "a"),
    }
    assert all(near(j.asked_ago, 0) for j in await store.in_flight(origin="discord", now=now))  # the claim's time
    assert await store.claim_in_flight(everything, owner="b", now=now, seconds=60.0, limit=10) == []  # held
    await store.release_leases([(j.id, Lease("a", j.lease_attempt)) for j in claimed], now)
    # Released, but claimed since b read them (attempt 0): b's claim skips them (a may have asked meanwhile).
    assert await store.claim_in_flight(everything, owner="b", now=now, seconds=60.0, limit=10) == []
    [again] = await store.claim_in_flight([(second, 1)], owner="b", now=now, seconds=60.0, limit=10)
    assert (again.id, again.lease_owner, again.lease_attempt) == (second, "b", 2)
    await store.release_leases([(second, Lease("b", 2))], now)
    read = [(first, 1), (second, 2)]
    assert [j.id for j in await store.claim_in_flight(read, owner="c", now=now, seconds=60.0, limit=1)] == [first]


async def test_an_expired_lease_is_claimed_again_with_a_higher_attempt_and_shows_it_was_abandoned(
    store: AnyStore,
) -> None:
    [one, two] = await add_jobs(store, 2)
    now = time.time()
    await store.claim_jobs(("submitted",), owner="a", now=now, seconds=60.0, limit=2)
    assert await store.claim_jobs(("submitted",), owner="b", now=now, seconds=60.0, limit=2) == []
    await store.release_leases([(two, Lease("a", 1))], now)
    # a's lease on `one` runs out without a release: it stopped in the middle of the work.
    await expire(store, one)
    assert [j.id for j in await store.claim_jobs(("submitted",), owner="b", now=now, seconds=60.0, limit=5,
                                                 abandoned=True)] == [one]  # fmt: skip
    assert await store.claim_jobs(("submitted",), owner="b", now=now, seconds=60.0, limit=5, abandoned=True) == []
    [again] = await store.claim_jobs(("submitted",), owner="c", now=now, seconds=60.0, limit=5, abandoned=False)
    assert (again.id, again.lease_owner, again.lease_attempt) == (two, "c", 2)
    await expire(store, one)
    [taken] = await store.claim_jobs(("submitted",), owner="d", now=now, seconds=60.0, limit=1, ids=[one])
    assert (taken.lease_owner, taken.lease_attempt) == ("d", 3)


async def test_a_write_under_an_old_lease_is_refused(store: AnyStore) -> None:
    [job_id] = await add_jobs(store, 1)
    now = time.time()
    [old] = await store.claim_jobs(("submitted",), owner="a", now=now, seconds=10.0, limit=1)
    old_lease = Lease("a", old.lease_attempt)
    assert await store.update_job(job_id, "submitted", lease=old_lease, provider_status="x", updated_at=201.0)
    await expire(store, job_id)  # a paused past its lease
    [new] = await store.claim_jobs(("submitted",), owner="b", now=now, seconds=60.0, limit=1)
    assert not await store.transition(job_id, "submitted", "failed", lease=old_lease, updated_at=212.0)
    assert not await store.update_job(job_id, "submitted", lease=old_lease, provider_status="y", updated_at=212.0)
    assert not await store.renew_lease(job_id, old_lease, now=now, seconds=200.0)
    # The new attempt under the old owner's name is not the new lease either.
    assert not await store.transition(job_id, "submitted", "failed", lease=Lease("a", new.lease_attempt),
                                      updated_at=212.0)  # fmt: skip
    assert await store.renew_lease(job_id, Lease("b", new.lease_attempt), now=now, seconds=200.0)
    assert await store.transition(job_id, "submitted", "processing", lease=Lease("b", new.lease_attempt),
                                  updated_at=213.0)  # fmt: skip
    current = await store.get_job(job_id)
    assert (current.status, current.provider_status) == ("processing", "x")
    assert near(current.lease_until, now + 200)
    assert await store.transition(job_id, "processing", "succeeded", updated_at=214.0)  # no lease: not fenced


async def test_a_write_under_an_older_claim_of_the_same_process_is_refused(store: AnyStore) -> None:
    # One process (on SQLite, the only one) claims a job, pauses past the lease and claims it again: the owner's
    # name is the same, so only the attempt tells the stale claim from the live one.
    [job_id] = await add_jobs(store, 1)
    now = time.time()
    [old] = await store.claim_jobs(("submitted",), owner="a", now=now, seconds=10.0, limit=1)
    await expire(store, job_id)  # the pause
    [new] = await store.claim_jobs(("submitted",), owner="a", now=now, seconds=90.0, limit=1)
    old_lease, new_lease = Lease("a", old.lease_attempt), Lease("a", new.lease_attempt)
    assert not await store.update_job(job_id, "submitted", lease=old_lease, provider_status="y", updated_at=212.0)
    assert not await store.transition(job_id, "submitted", "failed", lease=old_lease, updated_at=212.0)
    assert not await store.renew_lease(job_id, old_lease, now=now, seconds=200.0)
    assert await store.transition(job_id, "submitted", "processing", lease=new_lease, updated_at=213.0)
    current = await store.get_job(job_id)
    assert (current.status, current.provider_status) == ("processing", None)


async def test_releasing_frees_a_claim_but_leaves_a_newer_one_alone(store: AnyStore) -> None:
    [job_id] = await add_jobs(store, 1)
    now = time.time()
    await store.claim_jobs(("submitted",), owner="a", now=now, seconds=60.0, limit=1)
    await store.release_leases([(job_id, Lease("a", 1))], now)
    released = await store.get_job(job_id)
    assert (released.lease_owner, released.lease_attempt) == (None, 1) and near(released.lease_until, now)
    [again] = await store.claim_jobs(("submitted",), owner="a", now=now, seconds=60.0, limit=1)
    assert again.lease_attempt == 2
    await store.release_leases([(job_id, Lease("a", 1))], now)  # the old claim's release: too late
    assert (await store.get_job(job_id)).lease_owner == "a"
    await store.release_leases([], now)


async def test_queued_jobs_are_claimed_for_the_free_provider_slots_in_the_given_order(store: AnyStore) -> None:
    await add_jobs(store, 2, status="submitted")
    for n in range(4):
        await store.add_job(replace(BLANK, id=f"q{n}", status="queued", created_at=100.0 + n))
    backwards = lambda jobs: list(reversed(jobs))  # noqa: E731
    now = time.time()
    taken = await store.claim_queued(capacity=4, owner="a", now=now, seconds=100.0, order=backwards)
    assert [(j.id, j.status, j.lease_owner, j.updated_at) for j in taken] == [
        ("q3", "reserved", "a", now),
        ("q2", "reserved", "a", now),
    ]
    assert all(near(j.lease_until, now + 100) for j in taken)
    assert await store.claim_queued(capacity=4, owner="b", now=now, seconds=100.0, order=backwards) == []
    assert await store.count_in(("queued",)) == 2


async def test_a_reserved_job_takes_a_slot_only_with_room_and_nobody_waiting(store: AnyStore) -> None:
    await add_jobs(store, 2, status="processing")
    await store.add_job(replace(BLANK, id="mine", lease_owner="a", lease_until=150.0, lease_attempt=1))
    now = time.time()
    assert not await store.take_slot("mine", Lease("a", 1), capacity=2, now=now, seconds=60.0)  # two hold both
    assert await store.take_slot("mine", Lease("a", 1), capacity=3, now=now, seconds=60.0)
    assert near((await store.get_job("mine")).lease_until, now + 60)
    assert not await store.take_slot("mine", Lease("b", 1), capacity=3, now=now, seconds=70.0)  # not its lease
    await store.add_job(replace(BLANK, id="waiting", status="queued"))
    assert not await store.take_slot("mine", Lease("a", 1), capacity=9, now=now, seconds=70.0)  # the queue goes first


async def test_two_processes_claiming_at_once_take_disjoint_jobs(backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite serves one bot process (Store.open(single_instance=True) refuses a second)")
    first, second = await backend.open(), await backend.open()
    await add_jobs(first, 60)
    claims = await asyncio.gather(
        *(
            (first, second)[n % 2].claim_jobs(("submitted",), owner=f"p{n}", now=200.0, seconds=100.0, limit=7)
            for n in range(10)
        )
    )
    taken = [job.id for claim in claims for job in claim]
    assert len(taken) == len(set(taken)) == 60  # every job once, none twice
    assert all(len(claim) <= 7 for claim in claims)


async def test_two_processes_dispatching_at_once_never_take_more_slots_than_there_are(backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite serves one bot process (Store.open(single_instance=True) refuses a second)")
    first, second = await backend.open(), await backend.open()
    await add_jobs(first, 1, status="processing")
    for n in range(30):
        await first.add_job(replace(BLANK, id=f"q{n:02}", status="queued", created_at=100.0 + n))

    def rotated(by: int) -> Callable[[list[Job]], list[Job]]:
        # Processes that saw the queue at different moments (new arrivals) order it differently.
        return lambda jobs: jobs[by:] + jobs[:by]

    slots = await asyncio.gather(
        *(
            (first, second)[n % 2].claim_queued(capacity=3, owner=f"p{n}", now=200.0, seconds=100.0, order=rotated(n))
            for n in range(12)
        )
    )
    taken = [job.id for claim in slots for job in claim]
    assert len(taken) == len(set(taken)) == 2  # one slot was held already: two free, taken once each
    assert await first.count_in(("reserved", "processing")) == 3


async def test_a_restarted_sqlite_bot_voids_the_claims_of_the_process_before_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3", single_instance=True)
    await store.add_job(replace(BLANK, status="succeeded"))
    await store.claim_jobs(("succeeded",), owner="gone", now=200.0, seconds=9_800.0, limit=1)
    await store.close()
    store = await Store.open(tmp_path / "bot.sqlite3", single_instance=True)
    try:
        [job] = await store.claim_jobs(("succeeded",), owner="new", now=201.0, seconds=99.0, limit=1, abandoned=True)
        assert (job.lease_owner, job.lease_attempt) == ("new", 2)
    finally:
        await store.close()


async def test_a_members_notify_preference_defaults_to_mention_and_is_kept(store: AnyStore) -> None:
    assert await store.notify_preference(ALICE) == "mention"
    await store.set_notify_preference(ALICE, "dm")
    await store.set_notify_preference(BOB, "off")
    await store.set_notify_preference(ALICE, "off")
    assert (await store.notify_preference(ALICE), await store.notify_preference(BOB)) == ("off", "off")
    assert await store.notify_preference(BIG) == "mention"


async def test_an_unknown_notify_mode_is_refused_by_the_table(store: AnyStore, backend: Backend) -> None:
    with pytest.raises(backend.integrity_error):
        await store.set_notify_preference(ALICE, "carrier pigeon")
    assert await store.notify_preference(ALICE) == "mention"


async def test_a_review_is_decided_once_and_a_rejected_job_stays_charged(store: AnyStore) -> None:
    await store.add_job(replace(BLANK, status="succeeded", cost_billed=4800))
    assert await store.decide_review("j1", None, "succeeded", review_state="pending", updated_at=101.0)
    assert not await store.decide_review("j1", None, "succeeded", review_state="pending", updated_at=102.0)
    assert await store.decide_review(
        "j1", "pending", "rejected", review_state="rejected", review_reason="no", updated_at=103.0
    )
    assert not await store.decide_review("j1", "pending", "succeeded", review_state="approved", updated_at=104.0)
    job = await store.get_job("j1")
    assert (job.status, job.review_state, job.review_reason) == ("rejected", "rejected", "no")
    usage = await store.usage(GUILD, ALICE, 0.0)
    assert (usage.used, usage.reserved) == (4800, 0)  # the provider billed it: spent, not given back
    assert await store.usage_table(GUILD, 0.0) != [] and await store.credits_used(GUILD, 0.0) == 4800
    with pytest.raises(ValueError, match="not a mutable job column"):
        await store.decide_review("j1", "pending", "succeeded", id="other", updated_at=105.0)


async def test_a_review_decision_writes_its_audit_row_once_only_when_it_is_made(store: AnyStore) -> None:
    await store.add_job(replace(BLANK, status="succeeded", review_state="pending"))
    audit = AuditEntry(GUILD, MOD, "approve", ALICE, "video j1 waiting", "video j1 approved", None, 110.0, "web")
    assert await store.decide_review("j1", "pending", "succeeded", audit=audit, review_state="approved", updated_at=1)
    assert not await store.decide_review("j1", "pending", "succeeded", audit=audit, review_state="approved",
                                         updated_at=2)  # fmt: skip
    assert await store.audit_entries(GUILD) == [audit]  # its source ('web') kept


# --- the dashboard --------------------------------------------------------------------------------------------


async def test_web_sessions_round_trip_expire_and_end(store: AnyStore) -> None:
    now = time.time()
    live = WebSession("a" * 64, None, BIG, "mod <b>", "zh-CN", now, now + 3600)
    await store.put_web_session(live)
    await store.put_web_session(WebSession("b" * 64, "state-1", None, None, None, now - 7200, now - 3600))
    assert await store.web_session("a" * 64) == live
    assert await store.web_session("b" * 64) is None  # expired: never valid again
    await store.put_web_session(replace(live, state="again"))  # the same id rewritten, not duplicated
    assert (await store.web_session("a" * 64)).state == "again"
    await store.delete_web_session("a" * 64)
    assert await store.web_session("a" * 64) is None


async def test_every_members_jobs_and_the_members_with_their_own_quota(store: AnyStore) -> None:
    await store.add_job(BLANK)
    await store.add_job(replace(BLANK, id="j2", user_id=BOB, created_at=101.0))
    await store.add_job(replace(BLANK, id="j3", guild_id=OTHER_GUILD))
    assert [job.id for job in await store.member_jobs(GUILD, None)] == ["j2", "j1"]
    assert [job.id for job in await store.member_jobs(GUILD, BOB)] == ["j2"]
    audit = AuditEntry(GUILD, MOD, "set", ALICE, None, "7", None, 1.0)
    await store.save_member_quota(GUILD, ALICE, MemberQuota(7000, None), audit)
    await store.save_member_quota(OTHER_GUILD, BOB, MemberQuota(None, "spam"), audit)
    assert await store.member_quota_rows(GUILD) == {ALICE: MemberQuota(7000, None)}


# --- one job per question -----------------------------------------------------------------------------------


async def test_a_second_reservation_with_the_same_request_key_is_refused_and_charges_nothing(
    store: AnyStore, credits: CreditService, clock: FakeClock
) -> None:
    await credits.set_caps(GUILD, MOD, member=10, server=10)
    await credits.reserve(replace(job(1, clock), request_key="ask:1"), ())
    with pytest.raises(DuplicateRequest):
        await credits.reserve(replace(job(2, clock), request_key="ask:1"), ())
    with pytest.raises(DuplicateRequest):  # the write without a quota (the command line's) is refused alike
        await store.add_job(replace(job(3, clock), request_key="ask:1"))
    await credits.reserve(replace(job(4, clock), request_key="ask:2"), ())  # another question
    await credits.reserve(job(5, clock), ())  # no key: never refused for one (the command line's jobs)
    await store.add_job(job(6, clock, user=BOB))
    assert (await store.get_job(job(1, clock).id)).request_key == "ask:1"
    assert await store.count_member_jobs(GUILD, ALICE) == 3
    status = await credits.status(GUILD, ALICE, ())
    assert (status.reserved, status.in_flight) == (12_000, 3)


async def test_two_processes_reserving_one_question_at_once_make_exactly_one_job(
    backend: Backend, kling: Any, clock: FakeClock
) -> None:
    stores = [await backend.open(), await backend.open()]  # two processes: two connections (pools) to one database
    services = [
        JobService(s, kling, credits=CreditService(s, DEFAULTS, clock=clock), clock=clock, owner=f"process-{n}")
        for n, s in enumerate(stores)
    ]
    request = JobRequest("text", "pressed everywhere", guild_id=GUILD, channel_id=2, user_id=ALICE, request_key="ask:7")
    results = await asyncio.gather(*(services[n % 2].reserve(request) for n in range(10)), return_exceptions=True)
    made = [r for r in results if isinstance(r, Job)]
    assert len(made) == 1 and all(isinstance(r, DuplicateRequest) for r in results if r not in made), results
    assert await stores[1].count_member_jobs(GUILD, ALICE) == 1
    usage = await stores[0].usage(GUILD, ALICE, 0.0)
    assert (usage.reserved, usage.in_flight) == (4000, 1)
