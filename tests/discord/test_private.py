"""Private videos end to end: nothing public anywhere, the video by DM with its buttons, and a closed DM's
fallbacks (the command's ephemeral follow-up while its token lives, else told at /video status)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.model import Job
from tests.fake_discord import wait_until
from tests.harness import Harness, harness, private_answer

PROMPT = "a secret lighthouse at dusk"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def public_messages(world: Harness) -> list[dict[str, Any]]:
    """Every message the bot holds in a server's channel or thread (everything but direct messages)."""
    fake = world.discord
    return [m for channel, ms in fake.messages.items() if channel not in fake.dm_channels for m in ms]


async def ended(world: Harness) -> Job:
    return await world.job_in("delivered", "undeliverable")


def buttons(message: dict[str, Any]) -> list[str]:
    return [item.get("custom_id", "") for row in message.get("components") or [] for item in row["components"]]


async def test_private_video_goes_by_dm_and_nothing_is_public(world: Harness) -> None:
    async with world.running():
        interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
        answer = await private_answer(interaction)
        job = await ended(world)
        assert job.status == "delivered" and job.private and job.delivered_via == "dm"
        dms = world.discord.dms("alice")
        assert len(dms) == 1 and dms[0]["attachments"] and buttons(dms[0])
        assert public_messages(world) == []
        assert all(m["flags"] & 64 for m in interaction.messages)
        assert "direct message" in answer
        assert PROMPT not in str(public_messages(world))


async def test_closed_dm_gets_the_video_as_an_ephemeral_followup(world: Harness) -> None:
    world.discord.close_dms("alice")
    async with world.running():
        interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
        await private_answer(interaction)
        job = await ended(world)
        assert job.status == "delivered" and job.delivered_via == "followup"
        await wait_until(lambda: any(m["attachments"] for m in interaction.messages))
        video = next(m for m in interaction.messages if m["attachments"])
        assert video["flags"] & 64 and buttons(video)
        assert public_messages(world) == [] and world.discord.dms("alice") == []


async def test_closed_dm_after_the_token_died_reaches_no_one_publicly(world: Harness) -> None:
    world.discord.close_dms("alice")
    world.sim.hold = True
    async with world.running():
        interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
        await private_answer(interaction)
        job = await world.job_in("submitted", "processing")
        store = world.resources.store
        assert await store.update_job(job.id, ("submitted", "processing"), followup_until=0.0, updated_at=time.time())
        world.sim.hold = False
        job = await ended(world)
        assert job.status == "undeliverable" and job.delivered_via == "none" and job.video_url
        assert not any(m["attachments"] for m in interaction.messages)
        assert public_messages(world) == [] and world.discord.dms("alice") == []
        # Told at the next command, once; the link is in /video status.
        status = await world.discord.slash("video", sub="status")
        await wait_until(lambda: any("could not reach you" in t for t in status.texts()))
        assert all(m["flags"] & 64 for m in status.messages)
        again = await world.discord.slash("video", sub="status")
        await private_answer(again)
        assert not any("could not reach you" in t for t in again.texts())
        assert (await world.resources.store.get_job(job.id)).undelivered_told  # type: ignore[union-attr]
        assert public_messages(world) == []


async def test_a_server_that_denies_private_videos_charges_nothing(world: Harness) -> None:
    async with world.running():
        guild_id = int(world.discord.guild_id)
        await world.resources.credits.set_private_policy(guild_id, 1, "deny")
        interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
        answer = await private_answer(interaction)
        assert "do not allow private videos" in answer and "Nothing was sent or charged" in answer
        assert await world.resources.store.jobs_in(("reserved", "queued", "submitted", "processing")) == []
        assert public_messages(world) == [] and world.sim.tasks == {}


async def test_the_note_after_a_command_is_sent_even_when_the_bot_stops_meanwhile(
    world: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # The note about an unreached video is sent by a listener that runs after the command's handler has ended; a
    # shutdown must wait for it too, or it reads a closed store and posts on a closed session.
    world.discord.close_dms("alice")
    world.sim.hold = True
    async with world.running():
        interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
        await private_answer(interaction)
        job = await world.job_in("submitted", "processing")
        store = world.resources.store
        assert await store.update_job(job.id, ("submitted", "processing"), followup_until=0.0, updated_at=time.time())
        world.sim.hold = False
        job = await ended(world)
        assert job.status == "undeliverable"
        world.discord.delay_next("POST", r"^/webhooks/", 1.0, times=2)  # the status answer, then the note
        status = await world.discord.slash("video", sub="status")
        await wait_until(lambda: any("could not reach you" in str(r.json) for r in world.discord.posted("POST")))
    # Leaving the block stopped the bot while the note was on its way.
    assert any("could not reach you" in t for t in status.texts())
    assert "Ignoring exception" not in caplog.text and "could not tell" not in caplog.text
