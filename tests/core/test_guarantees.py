"""Guarantees that once broke without any test noticing: each test here fails when its guarantee is taken out."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import Harness, harness


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


async def test_an_unexpected_exception_in_a_tick_does_not_end_the_poll_loop(
    world: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    fake = world.discord

    def failed_ticks() -> int:
        return sum("poll tick failed" in r.getMessage() for r in caplog.records)

    async with world.running():
        # The database breaks under the bot (its table renamed by another connection): every tick fails. In a
        # thread: waiting for the bot's write lock must not block the loop that would let the bot release it.
        other = sqlite3.connect(world.database, timeout=5, check_same_thread=False)
        await asyncio.to_thread(other.execute, "ALTER TABLE jobs RENAME TO jobs_away")
        other.commit()
        await wait_until(lambda: failed_ticks() >= 2)
        await asyncio.to_thread(other.execute, "ALTER TABLE jobs_away RENAME TO jobs")
        other.commit()
        other.close()
        await fake.slash("video", {"prompt": "after the trouble"}, sub="text")
        job = await world.job_in("delivered")
    assert job.prompt == "after the trouble"


async def test_a_video_waits_for_its_thread_when_discord_is_slow_to_open_it(world: Harness) -> None:
    fake = world.discord
    world.sim.render_seconds = 0.0  # done before the thread exists
    fake.delay_next("POST", r"/threads$", 0.5)
    async with world.running():
        await fake.slash("video", {"prompt": "quick render, slow thread"}, sub="text")
        job = await world.job_in("delivered")
    [thread] = fake.threads()
    assert str(job.thread_id) == thread["id"]
    assert [m for m in fake.messages[thread["id"]] if m["files"]]  # in its thread
    assert not [m for m in fake.messages[fake.general] if m["files"]]  # not in the channel


async def test_a_job_that_fails_while_its_thread_opens_shows_it_and_tells_the_member(world: Harness) -> None:
    fake = world.discord
    world.sim.render_seconds = 0.0
    fake.delay_next("POST", r"/threads$", 0.5)
    async with world.running():
        await fake.slash("video", {"prompt": "please fail-render now"}, sub="text")
        job = await world.job_in("failed")
        await wait_until(lambda: fake.threads() and len(fake.messages[fake.threads()[0]["id"]]) >= 2)
        thread = fake.threads()[0]["id"]
        await wait_until(lambda: fake.messages[thread][0]["content"].startswith("❌ **Failed**"))
    assert any("could not be made" in m["content"] for m in fake.messages[thread])
    assert job.error and "render error" in job.error


async def test_a_file_discord_refuses_as_too_large_is_posted_as_its_link(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        world.discord.filesize_limit = 1024 * 1024  # the server's real limit is smaller than the interaction said
        world.sim.video_bytes = b"\x00\x00\x00\x18ftypmp42" + bytes(2 * 1024 * 1024)
        async with world.running():
            await world.discord.slash(
                "video", {"prompt": "bigger than it looks"}, sub="text", attachment_size_limit=25 * 1024 * 1024
            )
            job = await world.job_in("delivered")
        fake: FakeDiscord = world.discord
        thread = str(job.thread_id)
        uploads = [r for r in fake.posted("POST", rf"/channels/{thread}/messages$") if r.files]
        [video] = [m for m in fake.messages[thread] if job.video_url and job.video_url in m["content"]]
    assert len(uploads) == 1  # one refused upload (413), then the link at once
    assert "upload limit" in video["content"]
