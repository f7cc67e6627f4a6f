"""Discord sharding: each bot process runs the shards it is given and answers the commands of their guilds; with no
shard settings one process runs every shard Discord recommends; bad shard settings are one line and exit 1."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_shard_ids
from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import KEY, Harness, bot_process, running_fakes
from tests.ops.test_discord_process import bot_env

pytest_plugins = ["tests.postgres"]


@pytest.fixture
async def sharded() -> AsyncIterator[tuple[FakeDiscord, KlingSimulator]]:
    """A fake Discord recommending two shards, with one more guild on each shard, and the simulator."""
    fake, sim = FakeDiscord(shards=2), KlingSimulator(api_key=KEY, endpoint_path="proc", render_seconds=0.2)
    fake.add_guild("zero", shard=0)
    fake.add_guild("one", shard=1)
    async with running_fakes(fake, sim) as started:
        yield started


def videos_in(fake: FakeDiscord, guild_id: str) -> list[dict]:
    """Messages with a file in the job threads of a guild's text channel."""
    threads = fake.threads(fake.text_channel(guild_id))
    return [m for t in threads for m in fake.messages[t["id"]] if m["files"]]


async def running(processes: list[asyncio.subprocess.Process]) -> bool:
    """True while every process runs; one that stopped fails the test with the end of its log."""
    for process in processes:
        if process.returncode is not None:
            assert process.stderr is not None
            log = (await process.stderr.read()).decode()
            raise AssertionError(f"a bot process exited with {process.returncode}: {log[-3000:]}")
    return True


async def all_ready(
    processes: list[asyncio.subprocess.Process], fake: FakeDiscord, shards: list[tuple[int, int]]
) -> bool:
    return await running(processes) and sorted(fake.connected_shards) == shards


async def logged_in(process: asyncio.subprocess.Process) -> str:
    """The process's "logged in" log line, read from its stderr as it comes."""
    assert process.stderr is not None
    while line := await process.stderr.readline():
        if b"logged in as" in line:
            return line.decode()
    raise AssertionError("the process ended without logging in")


def test_shard_ids_take_ranges_and_lists_within_the_count() -> None:
    assert parse_shard_ids("0-3", 8) == [0, 1, 2, 3]
    assert parse_shard_ids("0,2", 4) == [0, 2]
    assert parse_shard_ids("5, 0-1", 8) == [0, 1, 5]
    for bad in ("3-1", "a", "0,", "-1", "1-"):
        with pytest.raises(ConfigError, match="SHARD_IDS"):
            parse_shard_ids(bad, 8)
    with pytest.raises(ConfigError, match="shard 4 does not exist with SHARD_COUNT=4"):
        parse_shard_ids("0-4", 4)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--shard-ids", "0-3", "--shard-count", "2"], {}, "error: SHARD_IDS: shard 3 does not exist"),
        (["--shard-ids", "0,2"], {}, "error: SHARD_IDS needs SHARD_COUNT"),
        ([], {"SHARD_IDS": "one", "SHARD_COUNT": "2"}, "error: SHARD_IDS: 'one' is not a list of shard ids"),
        (["--shard-count", "0"], {}, "error: SHARD_COUNT must be at least 1"),
    ],
)
async def test_shards_that_do_not_fit_are_one_line_and_exit_1(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "SHARD_"))}
    environment |= {"DISCORD_TOKEN": "t", "KLING_API_KEY": KEY, "KLING_ENDPOINT_PATH": "proc"} | env
    environment["DATABASE_PATH"] = str(tmp_path / "bot.sqlite3")
    process = await bot_process("run", *args, env=environment, cwd=tmp_path)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert err.decode().strip().splitlines() == [err.decode().strip()]  # one line
    assert err.decode().startswith(says), err.decode()
    assert not (tmp_path / "bot.sqlite3").exists()  # refused before anything opened


async def test_without_shard_settings_one_process_runs_every_shard_discord_recommends(
    sharded: tuple[FakeDiscord, KlingSimulator], tmp_path: Path
) -> None:
    fake, sim = sharded
    world = Harness(fake, sim, tmp_path / "bot.sqlite3")
    world.settings_overrides = {"kling_endpoint_path": "proc"}
    sim.endpoint_path = "proc"
    async with world.running() as bot:
        await wait_until(lambda: sorted(fake.connected_shards) == [(0, 2), (1, 2)])
        await wait_until(lambda: len(bot.guilds) == 3)
        for guild_id in fake.guild_names:
            sent = await fake.slash(
                "video", {"prompt": f"in {guild_id}"}, sub="text", channel=fake.text_channel(guild_id)
            )
            assert sent.sent_to == [(fake.shard_of(guild_id), 2)]
            await sent.wait_response()
        await wait_until(lambda: all(len(videos_in(fake, g)) == 1 for g in fake.guild_names))
    assert [get for get in fake.posted("GET", r"^/gateway/bot$")]  # the count came from Discord


async def test_two_processes_each_answer_their_shards_guilds_and_both_deliver(
    sharded: tuple[FakeDiscord, KlingSimulator], tmp_path: Path, postgres_dsn: str
) -> None:
    fake, sim = sharded
    env = bot_env(fake, sim, tmp_path, DATABASE_URL=postgres_dsn)
    processes = [
        await bot_process("run", "--shard-ids", str(shard), "--shard-count", "2", env=env, cwd=tmp_path)
        for shard in (0, 1)
    ]
    try:
        both = [(0, 2), (1, 2)]
        await wait_until(lambda: all_ready(processes, fake, both), within=30)
        guilds = {shard: next(g for g in fake.guild_names if fake.shard_of(g) == shard) for shard in (0, 1)}
        for shard, guild_id in guilds.items():
            channel = fake.text_channel(guild_id)
            sent = await fake.slash("video", {"prompt": f"shard {shard}"}, sub="text", channel=channel)
            # Only the session of the guild's shard got the command, and only process `shard` holds that shard.
            assert sent.sent_to == [(shard, 2)]
            await sent.wait_response(timeout=15)
        await wait_until(lambda: all(len(videos_in(fake, g)) == 1 for g in guilds.values()), within=30)
        # Each process says which servers and shards it runs once ready (which may come after its first command).
        ready = [await asyncio.wait_for(logged_in(p), 30) for p in processes]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        logs = [(await asyncio.wait_for(p.communicate(), 15))[1].decode() for p in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
    for shard, (process, line, log) in enumerate(zip(processes, ready, logs, strict=True)):
        assert process.returncode == 0, log[-2000:]
        in_shard = sum(1 for g in fake.guild_names if fake.shard_of(g) == shard)
        assert f"in {in_shard} servers, shards {shard} of 2" in line
    assert fake.unexpected == []


@pytest.mark.parametrize(
    ("values", "pace"),
    [
        ({}, 45.0),  # one process runs every shard: all of the bot's pace
        ({"shard_ids": "0", "shard_count": 4}, 11.25),  # one shard of four: a quarter of it
        ({"shard_ids": "0-1", "shard_count": 4}, 22.5),
        ({"shard_ids": "0", "shard_count": 4, "discord_requests_per_second": 30}, 30.0),  # the operator's choice
    ],
)
def test_each_process_paces_its_discord_requests_by_its_share_of_the_shards(values: dict, pace: float) -> None:
    settings = load_settings(env_file=None, discord_token="t", kling_api_key="k", kling_endpoint_path="p", **values)
    assert settings.discord_pace() == pace
