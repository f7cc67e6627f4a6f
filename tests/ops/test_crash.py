"""SIGKILL at each dangerous point, then a restart: every job delivered once, submitted once, charged once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.crashpoints import POINTS
from bot.provider.sim_videos import sample_video
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import bot_process
from tests.ops.test_discord_process import bot_env, fakes  # noqa: F401  (the fixture)
from tests.ports import free_port

TICK_COUNT = "kling_bot_poll_tick_seconds_count "


def delivered(database: Path) -> bool:
    """Read the bot's database from outside, as an operator would (WAL lets both connections work)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT count(*) FROM jobs WHERE status = 'delivered'").fetchone()[0] == 1


async def ticks_done(port: int, *, at_least: float | None = None) -> Any:
    """The poll ticks the bot process counted (its Prometheus endpoint); with `at_least`, whether it got there."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as answer:
        text = await answer.text()
    count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(TICK_COUNT))
    return count if at_least is None else count >= at_least


def videos(fake: FakeDiscord) -> list[dict]:
    return [m for channel in fake.messages.values() for m in channel if m["files"]]


@pytest.mark.parametrize("point", POINTS)
async def test_killed_at_a_dangerous_point_the_job_is_still_delivered_exactly_once(
    fakes: tuple[FakeDiscord, KlingSimulator],  # noqa: F811
    tmp_path: Path,
    point: str,
) -> None:
    fake, sim = fakes
    env = bot_env(fake, sim, tmp_path)
    crashing = await bot_process("run", env={**env, "KLING_BOT_CRASH_AT": point}, cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        await fake.slash("video", {"prompt": f"survive {point}"}, sub="text")
        await asyncio.wait_for(crashing.wait(), 20)
    finally:
        if crashing.returncode is None:
            crashing.kill()
    assert crashing.returncode == -signal.SIGKILL

    fake.identified.clear()
    metrics_port = free_port()
    restarted = await bot_process("run", env={**env, "METRICS_PORT": str(metrics_port)}, cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        await wait_until(lambda: delivered(tmp_path / "bot.sqlite3"), within=20)
        # Several more ticks, counted on the bot's own metrics: a second post would show up in them.
        seen = await ticks_done(metrics_port)
        await wait_until(lambda: ticks_done(metrics_port, at_least=seen + 5), within=20)
        restarted.send_signal(signal.SIGTERM)
        await asyncio.wait_for(restarted.wait(), 10)
    finally:
        if restarted.returncode is None:
            restarted.kill()
    assert restarted.returncode == 0

    [video] = videos(fake)
    assert video["files"][0][1] == sample_video()
    assert sum(1 for r in sim.requests if r.method == "POST") == 1
    assert len(sim.tasks) == 1
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        [job] = await store.jobs_in(("delivered",))
        usage = await store.usage(int(fake.guild_id), int(fake.users["alice"]["id"]), 0)
        assert await store.count_in(("reserved", "queued", "submitted", "processing", "succeeded", "failed")) == 0
    finally:
        await store.close()
    assert job.result_message_id == int(video["id"])
    assert (usage.used, usage.reserved) == (4_000, 0)  # 5 s at 720p, billed once
