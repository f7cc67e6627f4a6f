"""Processes on one PostgreSQL: a once-per-fleet duty is held by one of them and moves when it dies; a callback
that reaches one process wakes the others (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.storage.fleet import SoloFleet, open_fleet
from bot.storage.postgres_fleet import PgFleet
from tests.fake_discord import wait_until
from tests.harness import Harness, callback_settings, harness

pytest_plugins = ["tests.postgres"]

HOLDER = """
import asyncio, sys
from bot.storage.postgres_fleet import PgFleet

async def main():
    fleet = PgFleet(sys.argv[1], "doomed")
    assert await fleet.holds("alerts")
    print("held", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def two(postgres_dsn: str) -> AsyncIterator[tuple[PgFleet, PgFleet]]:
    first, second = PgFleet(postgres_dsn, "first"), PgFleet(postgres_dsn, "second")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def test_sqlite_is_a_fleet_of_one() -> None:
    assert isinstance(open_fleet("/tmp/bot.sqlite3"), SoloFleet)
    assert isinstance(open_fleet("postgresql://bot@db/bot"), PgFleet)


async def test_one_process_holds_a_duty_until_it_lets_go(two: tuple[PgFleet, PgFleet]) -> None:
    first, second = two
    assert await first.holds("alerts")
    assert await first.holds("alerts")  # asking again keeps it
    assert not await second.holds("alerts")
    assert await second.holds("sweep")  # each duty is its own lock
    await first.close()
    await wait_until(lambda: second.holds("alerts"))  # at its next look (answers stand a couple of seconds)


async def test_a_duty_moves_when_its_process_is_killed(tmp_path: Path, postgres_dsn: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, postgres_dsn, stdout=asyncio.subprocess.PIPE, cwd=Path.cwd()
    )
    survivor = PgFleet(postgres_dsn, "survivor")
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"held\n"
        assert not await survivor.holds("alerts")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await wait_until(lambda: survivor.holds("alerts"))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await survivor.close()


async def test_a_hint_reaches_every_other_process_and_not_its_sender(two: tuple[PgFleet, PgFleet]) -> None:
    first, second = two
    heard: dict[str, list[tuple[str, str]]] = {"first": [], "second": []}

    async def record(name: str, kind: str, text: str) -> None:
        heard[name].append((kind, text))

    await first.listen(lambda kind, text: record("first", kind, text))
    await second.listen(lambda kind, text: record("second", kind, text))
    await wait_until(lambda: first.listening.is_set() and second.listening.is_set())
    await first.tell("hint", "task-1")
    await second.tell("alert", "the account needs money (really)")
    await wait_until(
        lambda: heard == {"first": [("alert", "the account needs money (really)")], "second": [("hint", "task-1")]}
    )


@pytest.fixture
async def world(tmp_path: Path, postgres_dsn: str) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides = {
            "database_url": postgres_dsn,
            "poll_interval_seconds": 60.0,  # polling cannot deliver within the test: only a hint can
        }
        yield running


async def test_a_callback_to_another_process_speeds_a_job_this_one_polls(world: Harness, postgres_dsn: str) -> None:
    other = PgFleet(postgres_dsn, "process-a")  # the process the provider's callback reached
    world.sim.hold = True
    try:
        async with world.running() as bot:
            listening = bot.resources.fleet
            assert isinstance(listening, PgFleet)
            await wait_until(listening.listening.is_set)
            await world.discord.slash("video", {"prompt": "finished elsewhere"}, sub="text")
            job = await world.job_in("submitted", "processing")
            world.sim.hold = False
            world.sim.finish(job.provider_task_id)
            await other.tell("hint", job.provider_task_id)
            delivered = await world.job_in("delivered")
            assert delivered.id == job.id
            # Counted once its handling ends, which is after the delivery it started: waited for, not asserted.
            await world.hints_handled(1)
    finally:
        await other.close()


async def test_a_callback_this_process_takes_is_told_to_the_fleet(world: Harness, postgres_dsn: str) -> None:
    world.settings_overrides |= callback_settings()
    other = PgFleet(postgres_dsn, "process-b")
    told: list[str] = []

    async def record(kind: str, text: str) -> None:
        told.append(f"{kind} {text}")

    await other.listen(record)
    try:
        await wait_until(other.listening.is_set)
        async with world.running():
            await world.discord.slash("video", {"prompt": "called back here"}, sub="text")
            job = await world.job_in("delivered")
            await wait_until(lambda: f"hint {job.provider_task_id}" in told)
    finally:
        await other.close()


def alerts_in(world: Harness, channel: str) -> list[str]:
    return [m["content"] for m in world.discord.messages[channel] if m["content"].startswith("⚠️")]


async def test_alerts_are_posted_by_the_process_holding_the_duty_to_every_servers_log_channel(
    world: Harness, postgres_dsn: str
) -> None:
    world.settings_overrides["poll_interval_seconds"] = 0.05  # alerts are posted by the poll loop
    fake = world.discord
    far_log = fake.add_channel("far-log", 0)  # the log channel of a server another shard serves
    other = PgFleet(postgres_dsn, "process-c")  # another process: it raised an alert, and does not post alerts
    try:
        async with world.running() as bot:
            credits = bot.resources.credits
            await credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
            await credits.set_log_channel(999, 1, int(far_log))
            fleet = bot.resources.fleet
            assert isinstance(fleet, PgFleet)
            await wait_until(fleet.listening.is_set)
            await wait_until(lambda: fleet.holds("alerts"))  # nobody else does: the bot posts them
            await other.tell("alert", "the provider refused the account")
            for channel in (fake.log_channel, far_log):
                await wait_until(lambda c=channel: alerts_in(world, c) == ["⚠️ the provider refused the account"])
            await world.more_ticks()
            assert alerts_in(world, fake.log_channel) == ["⚠️ the provider refused the account"]  # once
    finally:
        await other.close()


async def test_a_process_without_the_alerts_duty_tells_its_alert_to_the_one_holding_it(
    world: Harness, postgres_dsn: str
) -> None:
    holder = PgFleet(postgres_dsn, "process-d")
    assert await holder.holds("alerts")
    told: list[tuple[str, str]] = []

    async def record(kind: str, text: str) -> None:
        told.append((kind, text))

    await holder.listen(record)
    world.settings_overrides["poll_interval_seconds"] = 0.05  # alerts are taken by the poll loop
    fake = world.discord
    try:
        await wait_until(holder.listening.is_set)
        async with world.running() as bot:
            await bot.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
            world.sim.fail_next("credits", on="submit")
            await fake.slash("video", {"prompt": "no money left"}, sub="text")
            await wait_until(lambda: any(kind == "alert" for kind, _ in told))
            await world.more_ticks()
            assert alerts_in(world, fake.log_channel) == []  # the holder posts it, not this process
    finally:
        await holder.close()


async def test_random_ids_are_not_told_to_the_fleet_but_a_matching_one_is(world: Harness, postgres_dsn: str) -> None:
    world.settings_overrides |= callback_settings()
    world.sim.hold = True
    world.sim.processing_after = 3600.0  # no callback of the simulator's own: only ours
    other = PgFleet(postgres_dsn, "process-e")
    told: list[tuple[str, str]] = []

    async def record(kind: str, text: str) -> None:
        told.append((kind, text))

    await other.listen(record)
    try:
        await wait_until(other.listening.is_set)
        async with world.running(), aiohttp.ClientSession() as session:
            await world.discord.slash("video", {"prompt": "a real one among many"}, sub="text")
            job = await world.job_in("submitted")
            told.clear()  # the submit's own callback
            url = world.settings_overrides["callback_public_url"]
            for n in range(50):
                async with session.post(url, json={"task_id": str(10**17 + n)}) as answer:
                    assert answer.status == 204
            await world.hints_handled(50)
            async with session.post(url, json={"task_id": job.provider_task_id}) as answer:
                assert answer.status == 204
            # Notifications arrive in the order they were sent: once the real one is heard, any other would be too.
            await wait_until(lambda: ("hint", job.provider_task_id) in told)
    finally:
        await other.close()
    assert {text for _, text in told} == {job.provider_task_id}
