"""The commands in the bot's direct messages, on the member's personal quota (PERSONAL_QUOTA_CREDITS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.credits import PERSONAL
from tests.fake_discord import wait_until
from tests.harness import Harness, harness
from tests.harness import private_answer as answer


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        h.settings_overrides["personal_quota_credits"] = 4.0  # one 5 s 720p video (0.8 credits a second)
        yield h


async def test_a_dm_command_makes_the_video_in_the_dm_on_the_personal_quota(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        sent = await fake.slash("video", {"prompt": "a heron at dawn", "duration": 5}, sub="text", dm=True)
        job = await world.job_in("delivered")
        told = await answer(sent)
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
        quota = await answer(await fake.slash("quota", {}, dm=True))
        server_quota = await answer(await fake.slash("quota", {}))
        alice = int(fake.users["alice"]["id"])
        assert await world.resources.store.count_member_jobs(PERSONAL, alice) == 1
        assert await world.resources.store.count_member_jobs(int(fake.guild_id), alice) == 0
    assert job.guild_id == PERSONAL and job.channel_id == int(sent.payload["channel_id"])
    assert "on its way" in told
    assert [r.json["prompt"] for r in world.sim.requests if r.method == "POST"] == ["a heron at dawn"]
    # Nothing public: the card and the video are in the DM, no server channel or thread holds anything.
    assert fake.messages[fake.general] == [] and fake.threads() == []
    assert sum(1 for m in fake.dms("alice") if m["files"]) == 1
    assert "personal credits" in quota and "4" in quota
    assert "personal credits" not in server_quota and "50" in server_quota


async def test_the_personal_quota_refuses_once_spent_and_leaves_servers_alone(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "first", "duration": 5}, sub="text", dm=True)
        await world.job_in("delivered")
        refused = await answer(await fake.slash("video", {"prompt": "second", "duration": 5}, sub="text", dm=True))
        in_server = await fake.slash("video", {"prompt": "in a server", "duration": 5}, sub="text")
        await wait_until(lambda: len(world.sim.tasks) == 2)
        assert "on its way" in await answer(in_server)
        alice = int(fake.users["alice"]["id"])
        assert await world.resources.store.count_member_jobs(PERSONAL, alice) == 1
    assert "Nothing was charged" in refused and "0 credits" in refused
    assert [r.json["prompt"] for r in world.sim.requests if r.method == "POST"] == ["first", "in a server"]


async def test_the_commands_are_offered_in_the_bots_dm(world: Harness) -> None:
    async with world.running() as bot:
        offered = {c.name: c.to_dict(bot.tree) for c in bot.tree.get_commands()}
    assert 1 in offered["video"]["contexts"] and 1 in offered["quota"]["contexts"]
    assert 1 not in offered["quota-admin"]["contexts"]


async def test_re_roll_under_a_dm_video_makes_a_dm_job_on_the_personal_quota(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides["personal_quota_credits"] = 8.0  # two 5 s videos
    async with world.running():
        await fake.slash("video", {"prompt": "a heron", "duration": 5}, sub="text", dm=True)
        first = await world.job_in("delivered")
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
        video = next(m for m in fake.dms("alice") if m["files"])
        pressed = await fake.press(f"video:reroll:{first.id}", video, dm=True)
        assert "on its way" in await answer(pressed)
        await wait_until(lambda: sum(1 for m in fake.dms("alice") if m["files"]) == 2)
        status = await answer(await fake.slash("video", {"job": first.id[:8]}, sub="status", dm=True))
        alice = int(fake.users["alice"]["id"])
        assert await world.resources.store.count_member_jobs(PERSONAL, alice) == 2
    assert fake.messages[fake.general] == [] and fake.threads() == []
    assert "/channels/0/" not in status
