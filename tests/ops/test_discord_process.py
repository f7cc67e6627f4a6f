"""The bot as a real process: `sync` registers the fixed command surface; `run` serves and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import KEY, bot_process, running_fakes


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDiscord, KlingSimulator]]:
    sim = KlingSimulator(api_key=KEY, endpoint_path="proc", render_seconds=0.2)
    async with running_fakes(FakeDiscord(), sim) as started:
        yield started


def bot_env(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_"))}
    env.update(
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        KLING_API_KEY=KEY,
        KLING_ENDPOINT_PATH="proc",
        KLING_BASE_URL=sim.base_url(),
        DATABASE_PATH=str(tmp_path / "bot.sqlite3"),
        POLL_INTERVAL_SECONDS="0.1",
    )
    env.update(extra)
    return env


async def test_sync_registers_the_commands_in_the_guild(
    fakes: tuple[FakeDiscord, KlingSimulator], tmp_path: Path
) -> None:
    fake, sim = fakes
    env = bot_env(fake, sim, tmp_path, DISCORD_GUILD_ID=fake.guild_id)
    process = await bot_process("sync", env=env, cwd=tmp_path)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert "4 commands registered in server" in out.decode()
    [put] = fake.posted("PUT", rf"/applications/{fake.application_id}/guilds/{fake.guild_id}/commands")
    commands = {c["name"]: c for c in put.json}
    assert set(commands) == {"video", "quota", "quota-admin", "Animate image"}
    assert commands["Animate image"]["type"] == 3
    assert int(commands["quota-admin"]["default_member_permissions"]) == 32  # Manage Server
    video = {s["name"]: s for s in commands["video"]["options"]}
    assert set(video) == {"text", "image", "status", "history", "cancel", "notify"}
    text = {o["name"]: o for o in video["text"]["options"]}
    assert text["prompt"]["required"] and text["prompt"]["max_length"] == 3072
    assert [c["value"] for c in text["aspect_ratio"]["choices"]] == ["16:9", "9:16", "1:1"]
    assert [c["value"] for c in text["resolution"]["choices"]] == ["720p", "1080p"]
    assert (text["duration"]["min_value"], text["duration"]["max_value"]) == (3, 15)
    image = {o["name"]: o for o in video["image"]["options"]}
    assert image["image"]["type"] == 11 and image["image"]["required"]
    for command in put.json:
        for option in command.get("options", []):
            assert option["description"], option
            for inner in option.get("options", []):
                assert inner["description"] and inner["description"] != "…", inner


async def test_run_serves_and_stops_cleanly_on_sigterm(
    fakes: tuple[FakeDiscord, KlingSimulator], tmp_path: Path
) -> None:
    fake, sim = fakes
    process = await bot_process("run", env=bot_env(fake, sim, tmp_path), cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        await fake.slash("video", {"prompt": "a process clip"}, sub="text")
        await wait_until(lambda: any(m["files"] for t in fake.threads() for m in fake.messages[t["id"]]), within=20)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, err.decode()
    assert time.monotonic() - started < 10
    log = err.decode()
    assert "received SIGTERM" in log and "stopped cleanly" in log
    assert KEY not in log and fake.token not in log


async def test_backup_copies_the_database_while_the_bot_runs(
    fakes: tuple[FakeDiscord, KlingSimulator], tmp_path: Path
) -> None:
    fake, sim = fakes
    env = bot_env(fake, sim, tmp_path)
    process = await bot_process("run", env=env, cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        await fake.slash("video", {"prompt": "worth keeping"}, sub="text")
        await wait_until(lambda: any(m["files"] for t in fake.threads() for m in fake.messages[t["id"]]), within=20)
        backup = await bot_process("backup", str(tmp_path / "copy.sqlite3"), env=env, cwd=tmp_path)
        _, err = await asyncio.wait_for(backup.communicate(), 30)
        assert backup.returncode == 0, err.decode()
        assert process.returncode is None  # the bot kept running
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT prompt FROM jobs").fetchall() == [("worth keeping",)]
    copy.close()


async def test_sync_binds_neither_the_callback_nor_the_metrics_port(
    fakes: tuple[FakeDiscord, KlingSimulator], tmp_path: Path
) -> None:
    fake, sim = fakes
    with socket.socket() as taken_callback, socket.socket() as taken_metrics:  # a running bot holds both
        for taken in (taken_callback, taken_metrics):
            taken.bind(("127.0.0.1", 0))
            taken.listen()
        env = bot_env(
            fake,
            sim,
            tmp_path,
            CALLBACK_PUBLIC_URL="https://bot.example/kling/callback",
            CALLBACK_HOST="127.0.0.1",
            CALLBACK_PORT=str(taken_callback.getsockname()[1]),
            METRICS_PORT=str(taken_metrics.getsockname()[1]),
        )
        process = await bot_process("sync", env=env, cwd=tmp_path)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert "commands registered" in out.decode() and "address" not in err.decode().lower()
