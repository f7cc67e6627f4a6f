"""`python -m bot migrate-to`: every table of the SQLite store arrives in PostgreSQL, no bot can start on the SQLite
file while it copies, and the old process's claims do not hold the new fleet back."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from psycopg.rows import TupleRow

from bot import __main__ as cli
from bot.config import load_settings
from bot.core.model import AuditEntry, Job, MemberQuota, QuotaSettings, WebSession
from bot.storage.postgres import PgStore
from bot.storage.sqlite import RUNNING_TOTALS, Store
from tests.harness import KEY, bot_process

pytest_plugins = ["tests.postgres"]

GUILD, ALICE, BOB, MOD = 10, 21, 22, 9
OLD_OWNER = "old-host:123:abcd"  # the process that ran on the SQLite file before the move


def a_job(job_id: str, status: str, **fields: Any) -> Job:
    now = time.time()
    values: dict[str, Any] = dict(
        id=job_id, guild_id=GUILD, channel_id=30, user_id=ALICE, kind="text", prompt="p", duration=5,
        resolution="720p", aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None,
        status=status, provider_task_id=f"task-{job_id}", provider_status=None, error=None, video_url=None,
        video_seconds=None, billed_amount=None, cost_estimate=4000, cost_billed=None, attachment_size_limit=None,
        message_id=None, thread_id=None, status_message_id=None, result_message_id=None, attempts=1,
        delivery_attempts=0, created_at=now - 100, submitted_at=now - 90, finished_at=None, delivered_at=None,
        updated_at=now - 10,
    )  # fmt: skip
    return Job(**(values | fields))


async def fill_every_table(path: Path) -> None:
    """Rows in every table the store has, written through the store as the bot writes them; two jobs are held
    by the old process with claims that have not run out."""
    store = await Store.open(path)  # not as the bot opens it: the claims stay as the old process left them
    try:
        sha = await store.put_image(b"\x89PNG first frame", "image/png", 640, 480)
        until = time.time() + 3600
        await store.add_job(a_job("aa01", "delivered", image_sha256=sha, kind="image", cost_billed=4000))
        await store.add_job(a_job("aa02", "succeeded", video_url="https://v/2.mp4", lease_owner=OLD_OWNER,
                                  lease_until=until, lease_attempt=3, cancel_requested=True))  # fmt: skip
        await store.add_job(a_job("aa03", "processing", user_id=BOB, lease_owner=OLD_OWNER, lease_until=until,
                                  lease_attempt=1, parent_id="aa01", review_state=None,
                                  asked_at=time.time() - 5))  # fmt: skip
        audit = AuditEntry(GUILD, MOD, "set", ALICE, None, "7", "because", time.time())
        await store.save_quota_settings(GUILD, QuotaSettings(9000, "week", 2, 5, 77, 3000, 78), audit)
        await store.save_member_quota(GUILD, ALICE, MemberQuota(7000, None), audit)
        await store.save_role_quota(GUILD, 55, None, audit)
        await store.add_grant(GUILD, BOB, 1000, audit)
        await store.set_notify_preference(ALICE, "dm")
        await store.set_notify_preference(BOB, "off")
        await store.put_web_session(WebSession("ab" * 32, None, MOD, "mod", "zh-CN", time.time(), until))
    finally:
        await store.close()


async def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the SQLite file (enumerated from its schema) and its rows, in a stable order."""
    async with aiosqlite.connect(path) as db:
        async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'") as c:
            tables = [row[0] for row in await c.fetchall()]
        found = {}
        for table in tables:
            async with db.execute(f"SELECT * FROM {table}") as cursor:
                names = [column[0] for column in cursor.description]
                rows = [_plain(dict(zip(names, row, strict=True))) for row in await cursor.fetchall()]
                found[table] = sorted(rows, key=repr)
    return found


async def postgres_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    store = await PgStore.open(dsn)
    try:
        async with store.transaction() as db:
            cursor = await db.execute(f"SELECT * FROM {table}")
            names = [column.name for column in cursor.description or ()]
            rows: list[TupleRow] = await cursor.fetchall()
    finally:
        await store.close()
    return sorted((_plain(dict(zip(names, row, strict=True))) for row in rows), key=repr)


def _plain(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row as comparable values: flags as 0/1 (SQLite's), bytes as bytes; sorted by column name."""
    plain = {k: int(v) if isinstance(v, bool) else bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
    return tuple(sorted(plain.items()))


def migrate_env(database: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_", "CALLBACK_"))}
    return env | {"KLING_API_KEY": KEY, "KLING_ENDPOINT_PATH": "harness", "DATABASE_PATH": str(database)}


async def test_migrate_to_copies_every_table_of_the_store(tmp_path: Path, postgres_dsn: str) -> None:
    database = tmp_path / "bot.sqlite3"
    await fill_every_table(database)
    before = await sqlite_rows(database)
    empty = sorted(table for table, rows in before.items() if not rows)
    assert empty == [], f"fill_every_table must write a row in every table of the store: {empty}"
    process = await bot_process("migrate-to", postgres_dsn, env=migrate_env(database), cwd=tmp_path)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    for table, rows in before.items():
        if table in RUNNING_TOTALS:
            continue  # kept by SQLite's triggers; PostgreSQL counts the rows themselves (compared below)
        copied = await postgres_rows(postgres_dsn, table)
        if table == "jobs":  # the claims' expiry is the one change (see the test below)
            rows = sorted((tuple((k, 0.0 if k == "lease_until" and dict(r)["lease_owner"] else v) for k, v in r)
                           for r in rows), key=repr)  # fmt: skip
        assert copied == rows, table
        assert f"{len(rows)} {table}" in out.decode()
    target = await PgStore.open(postgres_dsn)
    source = await Store.open(database)
    try:
        assert await target.count_by_status() == await source.count_by_status()
        assert await target.usage(GUILD, ALICE, 0) == await source.usage(GUILD, ALICE, 0)
        assert await target.credits_used(GUILD, 0) == await source.credits_used(GUILD, 0)
        assert await target.notify_preference(ALICE) == "dm" and await target.notify_preference(BOB) == "off"
        # New rows continue after the copied ones.
        audit = AuditEntry(GUILD, MOD, "grant", BOB, None, "1", "again", time.time())
        await target.add_grant(GUILD, BOB, 500, audit)
        assert [e.action for e in await target.audit_entries(GUILD)][:2] == ["grant", "set"]
    finally:
        await source.close()
        await target.close()


async def test_the_old_processs_claims_do_not_hold_the_new_fleet_back(tmp_path: Path, postgres_dsn: str) -> None:
    database = tmp_path / "bot.sqlite3"
    await fill_every_table(database)
    target = await PgStore.open(postgres_dsn)
    try:
        await target.copy_from_sqlite(database)
        now = time.time()
        claim = {"owner": "new-host:1:ffff", "now": now, "seconds": 60.0, "limit": 10}
        # The video the old process was posting: taken at once, marked as one whose post may already exist.
        [delivery] = await target.claim_jobs(("succeeded",), abandoned=True, **claim)
        [polled] = await target.claim_jobs(("processing",), **claim)
    finally:
        await target.close()
    assert (delivery.id, polled.id) == ("aa02", "aa03")
    assert delivery.lease_attempt == 4  # the attempts go on: a write under the old claim stays refused


async def test_no_bot_can_start_on_the_sqlite_file_while_it_is_copied(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "bot.sqlite3"
    await fill_every_table(database)
    copying, go_on = asyncio.Event(), asyncio.Event()
    copy = PgStore.copy_from_sqlite

    async def slow_copy(self: PgStore, source: Path | str) -> dict[str, int]:
        copying.set()
        await go_on.wait()
        return await copy(self, source)

    monkeypatch.setattr(PgStore, "copy_from_sqlite", slow_copy)
    settings = load_settings(env_file=None, kling_api_key=KEY, kling_endpoint_path="harness", database_path=database)
    migrating = asyncio.create_task(cli.migrate_to(settings, postgres_dsn))
    try:
        await asyncio.wait_for(copying.wait(), 30)
        env = migrate_env(database) | {"DISCORD_TOKEN": "t", "DISCORD_API_BASE_URL": "http://127.0.0.1:9/api/v10"}
        bot = await bot_process("run", env=env, cwd=tmp_path)
        _, err = await asyncio.wait_for(bot.communicate(), 60)
    finally:
        go_on.set()
        assert await asyncio.wait_for(migrating, 60) == 0
    assert bot.returncode == 1 and "another bot process is running" in err.decode(), err.decode()


async def test_a_backup_of_postgresql_into_sqlite_keeps_every_table(tmp_path: Path, postgres_dsn: str) -> None:
    database, backup = tmp_path / "bot.sqlite3", tmp_path / "backup.sqlite3"
    await fill_every_table(database)
    target = await PgStore.open(postgres_dsn)
    try:
        await target.copy_from_sqlite(database)
        await target.backup(backup)
    finally:
        await target.close()
    before, after = await sqlite_rows(database), await sqlite_rows(backup)
    assert before.keys() == after.keys()
    for table, rows in after.items():  # the running totals too: the backup's triggers counted the copied jobs
        if table == "jobs":
            rows = [tuple((k, None if k == "lease_until" else v) for k, v in r) for r in rows]
            before[table] = [tuple((k, None if k == "lease_until" else v) for k, v in r) for r in before[table]]
        assert sorted(rows, key=repr) == before[table], table
