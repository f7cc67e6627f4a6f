"""The bot itself on PostgreSQL (DATABASE_URL): the same commands, jobs and quotas as on SQLite."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bot.storage.postgres import PgStore
from tests.harness import KEY, bot_process, harness

pytest_plugins = ["tests.postgres"]


async def test_a_video_is_made_delivered_and_charged_with_the_database_on_postgresql(
    tmp_path: Path, postgres_dsn: str
) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {"database_url": postgres_dsn}
        fake = world.discord
        async with world.running():
            await fake.slash("video", {"prompt": "kept in postgres"}, sub="text")
            job = await world.job_in("delivered")
            status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
        [thread] = fake.threads()
        assert [m for m in fake.messages[thread["id"]] if m["files"]]
        assert status.used == job.cost_billed == 4_000
    assert not (tmp_path / "bot.sqlite3").exists()  # DATABASE_URL took the place of DATABASE_PATH


async def test_migrate_to_copies_an_sqlite_database_with_its_history_and_quotas(
    tmp_path: Path, postgres_dsn: str
) -> None:
    async with harness(tmp_path) as world:
        fake = world.discord
        async with world.running():
            await world.resources.credits.set_member_limit(int(fake.guild_id), 9, int(fake.users["bob"]["id"]), 7_000)
            await world.resources.credits.grant(int(fake.guild_id), 9, int(fake.users["bob"]["id"]), 1_000, "welcome")
            await fake.slash("video", {"prompt": "history worth keeping"}, sub="text")
            job = await world.job_in("delivered")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_"))}
        env |= {"KLING_API_KEY": KEY, "KLING_ENDPOINT_PATH": "harness", "DATABASE_PATH": str(world.database)}
        process = await bot_process("migrate-to", postgres_dsn, env=env, cwd=tmp_path)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        assert "1 jobs" in out.decode() and "secret" not in out.decode()
        copy = await PgStore.open(postgres_dsn)
        try:
            assert await copy.get_job(job.id) == job
            bob = int(fake.users["bob"]["id"])
            assert (await copy.member_quota(int(fake.guild_id), bob)).override == 7_000
            assert [e.action for e in await copy.audit_entries(int(fake.guild_id))] == ["grant", "set"]
            assert (await copy.usage(int(fake.guild_id), bob, 0)).granted == 1_000
        finally:
            await copy.close()
        again = await bot_process("migrate-to", postgres_dsn, env=env, cwd=tmp_path)
        _, err = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode == 1 and "already holds jobs" in err.decode()  # never into a used database
