"""The store on a real SQLite file: migrations, pragmas, guarded transitions, backup."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.model import (
    AT_PROVIDER,
    HOLDING_A_SLOT,
    IN_PROGRESS,
    OPEN,
    STATES,
    WAITING,
    AuditEntry,
    Job,
    MemberQuota,
    QuotaSettings,
    Usage,
)
from bot.storage.sqlite import MIGRATIONS, Store

BLANK = Job(
    id="j1", guild_id=1, channel_id=2, user_id=3, kind="text", prompt="a cat", duration=5, resolution="720p",
    aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None, status="reserved",
    provider_task_id=None, provider_status=None, error=None, video_url=None, video_seconds=None, billed_amount=None,
    cost_estimate=4000, cost_billed=None, attachment_size_limit=None, message_id=None, thread_id=None,
    status_message_id=None, result_message_id=None, attempts=0, delivery_attempts=0, created_at=100.0,
    submitted_at=None, finished_at=None, delivered_at=None, updated_at=100.0,
)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    allowed: bool


async def test_a_new_database_gets_every_migration_and_the_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bot.sqlite3"
    store = await Store.open(path)
    await store.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


async def test_reopening_keeps_rows_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    await store.add_job(BLANK)
    await store.close()
    store = await Store.open(path)
    assert await store.get_job("j1") == BLANK
    await store.close()


async def test_a_database_from_a_newer_bot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        await Store.open(path)


async def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_job(replace(BLANK, image_sha256="no-such-image"))


async def test_a_transition_happens_once_when_two_loops_race(store: Store) -> None:
    await store.add_job(BLANK)
    results = await asyncio.gather(
        *(store.transition("j1", "reserved", "submitted", provider_task_id=str(n), updated_at=101.0) for n in range(10))
    )
    assert results.count(True) == 1
    job = await store.get_job("j1")
    assert job is not None and job.status == "submitted"
    assert not await store.transition("j1", "reserved", "failed", updated_at=102.0)


async def test_updates_refuse_columns_that_are_not_mutable(store: Store) -> None:
    await store.add_job(BLANK)
    with pytest.raises(ValueError, match="not a mutable"):
        await store.update_job("j1", "reserved", user_id=9, updated_at=1.0)
    with pytest.raises(ValueError, match="updated_at"):
        await store.update_job("j1", "reserved", attempts=1)


async def test_images_are_kept_once_per_content(store: Store) -> None:
    first = await store.put_image(b"png-bytes", "image/png", 400, 300)
    again = await store.put_image(b"png-bytes", "image/png", 400, 300)
    assert first == again
    stored = await store.get_image(first)
    assert stored is not None and stored.data == b"png-bytes" and (stored.width, stored.height) == (400, 300)


async def test_member_jobs_are_newest_first_and_scoped_to_the_server(store: Store) -> None:
    for n in range(3):
        await store.add_job(replace(BLANK, id=f"j{n}", created_at=100.0 + n))
    await store.add_job(replace(BLANK, id="other-guild", guild_id=99))
    assert [j.id for j in await store.member_jobs(1, 3)] == ["j2", "j1", "j0"]
    assert [j.id for j in await store.member_jobs(1, 3, limit=1, offset=1)] == ["j1"]
    assert await store.count_member_jobs(1, 3) == 3


async def test_backup_is_a_consistent_copy(store: Store, tmp_path: Path) -> None:
    await store.add_job(BLANK)
    await store.backup(tmp_path / "copy.sqlite3")
    copy = await Store.open(tmp_path / "copy.sqlite3")
    assert await copy.get_job("j1") == BLANK
    await copy.close()


async def test_a_moderators_change_and_its_audit_row_are_one_transaction(store: Store) -> None:
    good = AuditEntry(1, 9, "set", 5, "no override", "limit 10", None, 1.0)
    await store.save_member_quota(1, 5, MemberQuota(10_000, None), good)
    broken = replace(good, action=None)  # type: ignore[arg-type]  # the audit row cannot be written
    with pytest.raises(sqlite3.IntegrityError):
        await store.save_member_quota(1, 5, MemberQuota(99_000, None), broken)
    assert await store.member_quota(1, 5) == MemberQuota(10_000, None)  # the change went with its audit row
    assert len(await store.audit_entries(1)) == 1


# --- running totals and query plans -------------------------------------------------------------------------

# One step of a history: ("add", guild, user, status, estimate, billed, created), ("move", job, to, billed) through
# the guarded transition, ("bill", job, billed) through update_job, or ("drop", job), a raw DELETE.
STEP = st.one_of(
    st.tuples(
        st.just("add"), st.sampled_from([1, 2, None]), st.sampled_from([3, 4, None]), st.sampled_from(STATES),
        st.integers(0, 9000), st.none() | st.integers(0, 9000), st.floats(-10.0, 1000.0),
    ),
    st.tuples(st.just("move"), st.integers(0, 30), st.sampled_from(STATES), st.none() | st.integers(0, 9000)),
    st.tuples(st.just("bill"), st.integers(0, 30), st.none() | st.integers(0, 9000)),
    st.tuples(st.just("drop"), st.integers(0, 30)),
)  # fmt: skip


async def _apply(
    store: Store, db: aiosqlite.Connection, steps: list[tuple[Any, ...]], ids: list[str], *, legacy: bool = False
) -> None:
    for step in steps:
        if step[0] == "add":
            _, guild, user, status, estimate, billed, created = step
            ids.append(f"{len(ids):04x}")
            job = replace(BLANK, id=ids[-1], guild_id=guild, user_id=user, status=status, cost_estimate=estimate,
                          cost_billed=billed, created_at=created)  # fmt: skip
            if legacy:  # the jobs table of schema 4: only the columns it had
                await db.execute(
                    "INSERT INTO jobs (id, guild_id, user_id, kind, prompt, duration, resolution, status,"
                    " cost_estimate, cost_billed, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, guild, user, job.kind, job.prompt, job.duration, job.resolution, status, estimate,
                     billed, created, created),
                )  # fmt: skip
            else:
                await store.add_job(job)
        elif ids and step[0] == "move":
            await store.transition(ids[step[1] % len(ids)], STATES, step[2], cost_billed=step[3], updated_at=1.0)
        elif ids and step[0] == "bill":
            await store.update_job(ids[step[1] % len(ids)], STATES, cost_billed=step[2], updated_at=1.0)
        elif ids and step[0] == "drop":
            await db.execute("DELETE FROM jobs WHERE id = ?", (ids[step[1] % len(ids)],))


async def _rows(db: aiosqlite.Connection, sql: str) -> list[tuple[Any, ...]]:
    async with db.execute(sql) as cursor:
        return list(await cursor.fetchall())


async def _check_totals(store: Store, db: aiosqlite.Connection, *, reads: bool) -> None:
    """The totals equal a recount from the rows; with `reads`, the reads built on them answer as a full walk would."""
    jobs = await _rows(db, "SELECT guild_id, user_id, status, cost_estimate, cost_billed, created_at FROM jobs")
    member: dict[tuple[Any, ...], list[int]] = {}
    guild: dict[tuple[Any, ...], list[int]] = {}
    for g, u, status, estimate, billed, _ in jobs:
        for key, table in (((g, u, status), member), ((g, status), guild)):
            if None not in key:
                total = table.setdefault(key, [0, 0, 0])
                total[0], total[1], total[2] = (
                    total[0] + 1,
                    total[1] + estimate,
                    total[2] + (estimate if billed is None else billed),
                )
    for table, key in (("member_job_totals", "guild_id, user_id, status"), ("guild_job_totals", "guild_id, status")):
        kept = await _rows(db, f"SELECT {key}, jobs, estimated, settled FROM {table}")
        width = key.count(",") + 1
        counted = {row[:width]: list(row[width:]) for row in kept if row[width:] != (0, 0, 0)}
        assert counted == (member if table == "member_job_totals" else guild)
    assert not await _rows(db, "SELECT 1 FROM member_job_totals t GROUP BY guild_id, user_id HAVING MIN(first_created)"
                               " > (SELECT MIN(created_at) FROM jobs j WHERE j.guild_id = t.guild_id"
                               " AND j.user_id = t.user_id)")  # fmt: skip
    assert not await _rows(db, "SELECT 1 FROM guild_job_totals t GROUP BY guild_id HAVING MIN(first_created)"
                               " > (SELECT MIN(created_at) FROM jobs j WHERE j.guild_id = t.guild_id)")  # fmt: skip
    if not reads:
        return
    statuses: dict[str, int] = {}
    for row in jobs:
        statuses[row[2]] = statuses.get(row[2], 0) + 1
    assert await store.count_by_status() == dict(sorted(statuses.items()))
    for g, u in ((1, 3), (2, 4)):
        mine = [row for row in jobs if row[:2] == (g, u)]
        assert await store.count_member_jobs(g, u) == len(mine)
        for since in (0.0, 500.0):  # the totals, and a window of part of the history (the range query)
            used = sum(
                e if b is None else b
                for _, _, s, e, b, c in mine
                if s in ("succeeded", "delivered", "undeliverable", "rejected") and c >= since
            )
            reserved = sum(e for _, _, s, e, _, c in mine if s in IN_PROGRESS and c >= since)
            in_flight = sum(1 for row in mine if row[2] in IN_PROGRESS)
            assert await store.usage(g, u, since) == Usage(used, reserved, 0, in_flight)
            credits = sum(
                e if b is None else b
                for gg, _, s, e, b, c in jobs
                if gg == g and s not in ("failed", "cancelled") and c >= since
            )
            assert await store.credits_used(g, since) == credits
        held = sum(1 for row in jobs if row[0] == g and row[2] in IN_PROGRESS)
        assert await store._server_in_flight(db, g) == held


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(STEP, max_size=12), after=st.lists(STEP, max_size=12))
def test_running_totals_equal_a_recount_after_any_history_and_the_upgrade(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    async def run() -> None:
        # A database at schema 4 with jobs in it, upgraded (the backfill), then written to (the triggers).
        db = await aiosqlite.connect(":memory:", isolation_level=None)
        for number, script in enumerate(MIGRATIONS[:4], start=1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        store, ids = Store(db), []
        await _apply(store, db, before, ids, legacy=True)
        await store._migrate()
        await _check_totals(store, db, reads=False)
        await _apply(store, db, after, ids)
        await _check_totals(store, db, reads=True)
        await db.close()

    asyncio.run(run())


async def test_every_hot_query_is_served_by_an_index(store: Store) -> None:
    for n, status in enumerate(STATES * 3):
        await store.add_job(replace(BLANK, id=f"{n:04x}", status=status, created_at=100.0 + n,
                                    provider_task_id=f"t{n}"))  # fmt: skip
    sent: list[tuple[str, Any]] = []
    db = store._db
    connections = {id(c): c for c in (store._db, store._reader)}.values()  # the writer and the reader
    originals = {id(c): c.execute for c in connections}

    def recorder(original: Any) -> Any:
        def record(sql: str, params: Any = None) -> Any:
            sent.append((sql, params))
            return original(sql, params)

        return record

    for connection in connections:
        connection.execute = recorder(connection.execute)  # type: ignore[method-assign]
    await store.usage(1, 3, 0.0)
    await store.usage(1, 3, 110.0)  # a window of part of the history: the range query
    await store.reserve_job(replace(BLANK, id="new"), role_ids=[5], defaults=QuotaSettings(10**9, "total", 9, 9),
                            window_start=lambda _: 110.0, decide=lambda _: Decision(False))  # fmt: skip
    for statuses in (OPEN, WAITING, None):
        await store.member_jobs(1, 3, statuses=statuses, limit=25)
    await store.member_jobs(1, 3, limit=10, offset=10)
    await store.count_member_jobs(1, 3)
    await store.find_job(1, "0001", user_id=3, statuses=WAITING)
    for states in (AT_PROVIDER, WAITING, ("queued",), ("reserved",)):
        await store.jobs_in(states, origin="discord")
    await store.in_flight(origin="discord", now=200.0)  # the tick's narrow read, with its asked times
    await store.count_in(HOLDING_A_SLOT)
    await store.render_times(5, "720p")
    await store.job_by_task("t3")
    await store.jobs_by_tasks(["t3", "t4", "no-such-task"])
    await store.count_by_status()
    await store.credits_used(1, 0.0)
    await store.credits_used(1, 110.0)
    for connection in connections:
        connection.execute = originals[id(connection)]  # type: ignore[method-assign]
    plans = {}
    for sql, params in sent:
        if sql.startswith("SELECT") and " FROM jobs " in sql:
            plans[sql] = " | ".join(row[3] for row in await _rows_with(db, f"EXPLAIN QUERY PLAN {sql}", params))
    assert len(plans) >= 10
    for sql, plan in plans.items():
        assert "SCAN jobs" not in plan, (sql, plan)
    assert any("jobs_member_unsettled" in plan for plan in plans.values())  # /video status skips the history


async def _rows_with(db: aiosqlite.Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    async with db.execute(sql, params or ()) as cursor:
        return list(await cursor.fetchall())


async def test_reads_outside_a_transaction_do_not_queue_behind_the_writer_and_see_what_it_committed(
    store: Store,
) -> None:
    await store.add_job(BLANK)
    busy, free = threading.Event(), threading.Event()

    def hold() -> int:  # runs on the writer's thread: every statement sent to that connection queues behind it
        busy.set()
        free.wait()
        return 1

    await store._db.create_function("hold", 0, hold)
    writing = asyncio.get_running_loop().create_task(_hold_a_write(store, free))
    try:
        await asyncio.to_thread(busy.wait)
        reads = asyncio.gather(
            store.get_job(BLANK.id),
            store.usage(1, 3, 0.0),
            store.member_quota(1, 3),
            store.quota_settings(1, QuotaSettings(10**9, "total", 9, 9)),
            store.member_jobs(1, 3),
        )
        # A bound on a condition (the reads are done), not a sleep: on the writer's connection they never finish.
        job, usage, *_ = await asyncio.wait_for(reads, timeout=5)
        assert job is not None and job.prompt == BLANK.prompt  # the open transaction's change is not seen yet
        assert usage.in_flight == 1
    finally:
        free.set()
        await writing
    changed = await store.get_job(BLANK.id)
    assert changed is not None and changed.prompt == "a dog"  # the next read sees the commit


async def _hold_a_write(store: Store, free: threading.Event) -> None:
    async with store.transaction() as db:
        await db.execute("UPDATE jobs SET prompt = 'a dog' WHERE id = ?", (BLANK.id,))
        await db.execute("SELECT hold()")
