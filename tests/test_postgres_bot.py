"""The bot itself on PostgreSQL (DATABASE_URL): the same commands, jobs and quotas as on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import harness

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
