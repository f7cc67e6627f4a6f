"""Told when it is done: the requester, and only the requester, hears of the video as they chose with
`/video notify mention|dm|off`; a closed DM falls back to the mention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import Harness, harness
from tests.harness import private_answer as answer

NOBODY = {"parse": []}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def alice_only(fake: FakeDiscord) -> dict[str, Any]:
    return {"parse": [], "users": [int(fake.users["alice"]["id"])]}


def sneaky_prompt(fake: FakeDiscord) -> str:
    return f"@everyone <@{fake.users['bob']['id']}> <@&{fake.moderator_role}> a kite"


async def choose(fake: FakeDiscord, mode: str) -> str:
    return await answer(await fake.slash("video", {"mode": mode}, sub="notify"))


def thread_posts(fake: FakeDiscord) -> list[dict[str, Any]]:
    [thread] = fake.threads()
    return fake.messages[thread["id"]]


async def test_by_default_only_the_requester_is_mentioned(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": sneaky_prompt(fake)}, sub="text")
        await world.job_in("delivered")
        await world.more_ticks(3)
    _, video = thread_posts(fake)
    assert video["content"].startswith(f"<@{fake.users['alice']['id']}> your video is ready")
    assert video["allowed_mentions"] == alice_only(fake)
    for message in [m for channel in fake.messages.values() for m in channel if m is not video]:
        assert message["allowed_mentions"] in (None, NOBODY), message  # nobody else is ever pinged
    assert fake.dms("alice") == []


async def test_dm_sends_a_direct_message_with_the_videos_link_and_pings_nobody(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        assert "direct message" in await choose(fake, "dm")
        await fake.slash("video", {"prompt": sneaky_prompt(fake)}, sub="text")
        job = await world.job_in("delivered")
        await wait_until(lambda: fake.dms("alice"))
        await world.more_ticks(3)
    _, video = thread_posts(fake)
    assert video["content"] == "your video is ready." and video["allowed_mentions"] == NOBODY
    [dm] = fake.dms("alice")
    link = f"https://discord.com/channels/{fake.guild_id}/{job.thread_id}/{job.result_message_id}"
    assert dm["content"] == f"Your video `{job.id[:8]}` is ready: {link}"
    assert dm["allowed_mentions"] == NOBODY and len(thread_posts(fake)) == 2


async def test_a_closed_dm_falls_back_to_the_mention(world: Harness) -> None:
    fake = world.discord
    fake.close_dms("alice")
    async with world.running():
        await choose(fake, "dm")
        await fake.slash("video", {"prompt": "a quiet pond"}, sub="text")
        await world.job_in("delivered")
        await wait_until(lambda: len(thread_posts(fake)) == 3)
    _, video, mention = thread_posts(fake)
    assert video["allowed_mentions"] == NOBODY
    assert mention["content"] == f"<@{fake.users['alice']['id']}> your video is ready (above)."
    assert mention["allowed_mentions"] == alice_only(fake)
    assert fake.dms("alice") == []
    refused = [r for r in fake.posted("POST", r"/channels/\d+/messages$") if r.status == 403]
    assert len(refused) == 1  # Discord said 50007 once: the bot did not keep trying


async def test_off_neither_mentions_nor_messages(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        assert "not be mentioned" in await choose(fake, "off")
        await fake.slash("video", {"prompt": "a silent film"}, sub="text")
        await world.job_in("delivered")
        await world.more_ticks(5)  # time for a mention or a DM, which must not come
    assert all(m["allowed_mentions"] in (None, NOBODY) for m in thread_posts(fake))
    assert "<@" not in thread_posts(fake)[-1]["content"]
    assert fake.posted("POST", r"/users/@me/channels") == []


async def test_a_failure_is_told_by_dm_too(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await choose(fake, "dm")
        await fake.slash("video", {"prompt": "please fail-render now"}, sub="text")
        job = await world.job_in("failed")
        await wait_until(lambda: fake.dms("alice"))
    [dm] = fake.dms("alice")
    assert dm["content"].startswith(f"Your video `{job.id[:8]}` could not be made: https://discord.com/channels/")
    told = thread_posts(fake)[-1]
    assert told["content"].startswith("Your video could not be made") and told["allowed_mentions"] == NOBODY
