"""The store on a real SQLite file: migrations, pragmas, guarded transitions, backup."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from bot.model import AuditEntry, Job, MemberQuota
from bot.store import MIGRATIONS, Store

BLANK = Job(
    id="j1", guild_id=1, channel_id=2, user_id=3, kind="text", prompt="a cat", duration=5, resolution="720p",
    aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None, status="reserved",
    provider_task_id=None, provider_status=None, error=None, video_url=None, video_seconds=None, billed_amount=None,
    cost_estimate=4000, cost_billed=None, attachment_size_limit=None, message_id=None, thread_id=None,
    status_message_id=None, result_message_id=None, attempts=0, delivery_attempts=0, created_at=100.0,
    submitted_at=None, finished_at=None, delivered_at=None, updated_at=100.0,
)  # fmt: skip


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
