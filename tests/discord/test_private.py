"""Private videos end to end: nothing public anywhere, the video by DM with its buttons, and a closed DM's
fallbacks (the command's ephemeral follow-up while its token lives, else told at /video status). Its buttons work
in the DM on the server's quota, and what they make is private too; review holds it; a resumed delivery finds the
DM post instead of repeating it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.credits import PERSONAL
from bot.core.model import STATES, Job
from cogs.delivery import post_nonce
from tests.fake_discord import Interaction, wait_until
from tests.harness import Harness, harness, private_answer

PROMPT = "a secret lighthouse at dusk"
EDITED = "a secret lighthouse at dawn"
NEXT = "the secret lamp turns"


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


async def unreached_private_video(world: Harness) -> tuple[Interaction, Job]:
    """A private video (alice's DMs closed) finished after its command's token died: it reached no one."""
    world.sim.hold = True
    interaction = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text")
    await private_answer(interaction)
    job = await world.job_in("submitted", "processing")
    store = world.resources.store
    assert await store.update_job(job.id, ("submitted", "processing"), followup_until=0.0, updated_at=time.time())
    world.sim.hold = False
    return interaction, await ended(world)


def buttons(message: dict[str, Any]) -> list[str]:
    return [item.get("custom_id", "") for row in message.get("components") or [] for item in row["components"]]


def nothing_public(world: Harness, *prompts: str) -> None:
    """No message in a server's channel or thread shows a prompt, and no thread was opened."""
    shown = str(public_messages(world))
    assert not any(prompt in shown for prompt in prompts) and world.discord.threads() == []


def dm_videos(world: Harness, user: str = "alice") -> list[dict[str, Any]]:
    return [m for m in world.discord.dms(user) if m["attachments"]]


async def jobs_of(world: Harness, guild_id: int, user: str = "alice") -> list[Job]:
    """The member's jobs in a quota scope, oldest first."""
    user_id = int(world.discord.users[user]["id"])
    return list(reversed(await world.resources.jobs.member_jobs(guild_id, user_id)))


async def delivered_count(world: Harness, guild_id: int, count: int) -> list[Job]:
    async def reached() -> bool:
        return sum(j.status == "delivered" for j in await jobs_of(world, guild_id)) >= count

    await wait_until(reached)
    return await jobs_of(world, guild_id)


async def private_video_in_dm(world: Harness, prompt: str = PROMPT) -> tuple[Job, dict[str, Any]]:
    """A private video made in the server and delivered by DM; returns its job and its DM message."""
    await private_answer(await world.discord.slash("video", {"prompt": prompt, "private": True}, sub="text"))
    [job] = await delivered_count(world, int(world.discord.guild_id), 1)
    await wait_until(lambda: dm_videos(world))
    return job, dm_videos(world)[-1]


async def form_in_dm(world: Harness, custom_id: str, message: dict[str, Any], values: dict[str, str]) -> str:
    """Press a button that shows a form, in the DM, fill the form and send it there; returns the answer."""
    shown = await world.discord.press(custom_id, message, dm=True)
    await wait_until(lambda: shown.modal is not None)
    return await private_answer(await world.discord.submit_modal(shown, values))


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
    async with world.running():
        interaction, job = await unreached_private_video(world)
        assert job.status == "undeliverable" and job.delivered_via == "none" and job.video_url
        assert not any(m["attachments"] for m in interaction.messages)
        assert public_messages(world) == [] and world.discord.dms("alice") == []
        # Told at the next command, once; the link is in /video status.
        status = await world.discord.slash("video", sub="status")
        await wait_until(lambda: any("could not reach you" in t for t in status.texts()))
        assert all(m["flags"] & 64 for m in status.messages)
        again = await world.discord.slash("video", sub="status")
        await private_answer(again)
        await world.handlers_done()  # the note would come after the answer
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
    async with world.running():
        _, job = await unreached_private_video(world)
        assert job.status == "undeliverable"
        world.discord.delay_next("POST", r"^/webhooks/", 1.0, times=2)  # the status answer, then the note
        status = await world.discord.slash("video", sub="status")
        await wait_until(lambda: any("could not reach you" in str(r.json) for r in world.discord.posted("POST")))
    # Leaving the block stopped the bot while the note was on its way.
    assert any("could not reach you" in t for t in status.texts())
    assert "Ignoring exception" not in caplog.text and "could not tell" not in caplog.text


async def test_the_buttons_of_a_dm_video_work_there_on_the_servers_quota_and_make_private_videos(
    world: Harness,
) -> None:
    world.sim.task_videos = True  # each segment its own clip: Continue and Join read real frames
    guild_id = int(world.discord.guild_id)
    async with world.running():  # personal videos are off (the default): the DM press spends the server's quota
        original, video = await private_video_in_dm(world)
        assert sorted(b.split(":")[1] for b in buttons(video)) == ["continue", "delete", "edit", "reroll"]
        rerolled = await world.discord.press(f"video:reroll:{original.id}", video, dm=True)
        assert "private video" in await private_answer(rerolled)
        edited = await form_in_dm(world, f"video:edit:{original.id}", video, {"Prompt": EDITED})
        assert "private video" in edited
        await delivered_count(world, guild_id, 3)  # two at once per member
        continued = await form_in_dm(world, f"video:continue:{original.id}", video, {"Prompt (optional)": NEXT})
        assert "private video" in continued
        jobs = await delivered_count(world, guild_id, 4)
        await wait_until(lambda: len(dm_videos(world)) == 4)
        child = next(j for j in jobs if j.parent_id == original.id)
        segment = next(m for m in dm_videos(world) if f"video:join:{child.id}" in buttons(m))
        joined = await world.discord.press(f"video:join:{child.id}", segment, dm=True)
        await wait_until(lambda: any("Joined 2 segments" in text for text in joined.texts()))
        status = await world.resources.credits.status(guild_id, int(world.discord.users["alice"]["id"]), ())
        personal = await jobs_of(world, PERSONAL)
        deleted = await world.discord.press(f"video:delete:{original.id}", video, dm=True)
        assert await private_answer(deleted) == "Deleted."
        assert video["id"] not in [m["id"] for m in world.discord.dms("alice")]
    assert all(j.private and j.delivered_via == "dm" for j in jobs) and personal == []
    assert {j.prompt for j in jobs} == {PROMPT, EDITED, NEXT} and status.used == 4 * 4000  # four 5 s videos
    [joined_video] = [m for m in joined.messages if m["attachments"]]
    assert joined_video["flags"] & 64  # only the presser sees it
    nothing_public(world, PROMPT, EDITED, NEXT)


async def test_a_re_roll_from_the_ephemeral_follow_up_is_private_too(world: Harness) -> None:
    world.discord.close_dms("alice")
    async with world.running():
        await private_answer(await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text"))
        original = await ended(world)
        command = next(i for i in world.discord.interactions.values() if i.payload["type"] == 2)
        await wait_until(lambda: any(m["attachments"] for m in command.messages))
        video = next(m for m in command.messages if m["attachments"])
        pressed = await world.discord.press(f"video:reroll:{original.id}", video)  # in the server's channel
        assert "private video" in await private_answer(pressed)
        jobs = await delivered_count(world, int(world.discord.guild_id), 2)
        await wait_until(lambda: any(m["attachments"] for m in pressed.messages))
    assert [(j.private, j.delivered_via) for j in jobs] == [(True, "followup")] * 2
    assert all(m["flags"] & 64 for m in pressed.messages)
    nothing_public(world, PROMPT)


async def test_a_private_video_under_review_goes_by_dm_only_after_approve_and_a_reject_is_told_by_dm(
    world: Harness,
) -> None:
    fake = world.discord
    review = fake.add_channel("video-review", 0)
    async with world.running():
        guild_id = int(fake.guild_id)
        await world.resources.credits.set_review_channel(guild_id, 1, int(review))
        for prompt in (PROMPT, EDITED):
            await private_answer(await fake.slash("video", {"prompt": prompt, "private": True}, sub="text"))
        await wait_until(lambda: len(fake.messages[review]) == 2)
        await world.more_ticks(5)  # time for a delivery, which must not come
        assert dm_videos(world) == []
        first, second = await jobs_of(world, guild_id)
        by_job = {
            job.id: next(m for m in fake.messages[review] if job.id[:8] in m["content"]) for job in (first, second)
        }
        await fake.press(f"review:approve:{first.id}", by_job[first.id], user="mod")
        await wait_until(lambda: dm_videos(world))
        shown = await fake.press(f"review:reject:{second.id}", by_job[second.id], user="mod")
        await wait_until(lambda: shown.modal is not None)
        await fake.submit_modal(shown, {"Reason (the member reads it)": "too dark"}, user="mod")
        await wait_until(lambda: any("not approved" in m["content"] for m in fake.dms("alice")))
        approved = await world.resources.jobs.get(first.id)
    assert approved is not None and approved.delivered_via == "dm" and len(dm_videos(world)) == 1
    assert all("Private video" in m["content"] and m["embeds"] == [] for m in by_job.values())
    assert first.video_url in by_job[first.id]["content"]  # the moderators judge the video itself
    nothing_public(world, PROMPT, EDITED)


async def test_a_private_video_made_in_the_bots_dm_spends_the_personal_quota_and_stays_in_the_dm(
    world: Harness,
) -> None:
    world.settings_overrides["personal_quota_credits"] = 8.0  # two 5 s videos
    async with world.running():
        sent = await world.discord.slash("video", {"prompt": PROMPT, "private": True}, sub="text", dm=True)
        assert "private video" in await private_answer(sent)
        [first] = await delivered_count(world, PERSONAL, 1)
        await wait_until(lambda: dm_videos(world))
        pressed = await world.discord.press(f"video:reroll:{first.id}", dm_videos(world)[0], dm=True)
        assert "private video" in await private_answer(pressed)
        jobs = await delivered_count(world, PERSONAL, 2)
        await wait_until(lambda: len(dm_videos(world)) == 2)
        server_jobs = await jobs_of(world, int(world.discord.guild_id))
    assert [(j.private, j.guild_id, j.delivered_via) for j in jobs] == [(True, PERSONAL, "dm")] * 2
    assert server_jobs == [] and public_messages(world) == []
    nothing_public(world, PROMPT)


async def test_a_dm_post_a_stopped_deliverer_made_is_found_not_repeated(world: Harness) -> None:
    fake = world.discord
    fake.dedupe_nonces = False  # as Discord, minutes later: only the look-up in the DM stands in the way
    async with world.running():
        done, video = await private_video_in_dm(world)
        await world.stop_deliverer_after_its_post(done)
        again = await world.job_in("delivered")
    posts = [
        r for r in fake.posted("POST", r"/channels/\d+/messages$") if (r.json or {}).get("nonce") == post_nonce(done.id)
    ]
    assert again.result_message_id == int(video["id"]) and len(posts) == 1
    assert dm_videos(world) == [video]
    nothing_public(world, PROMPT)


async def test_a_press_in_the_dm_whose_roles_discord_does_not_give_is_told_and_charged_nothing(world: Harness) -> None:
    async with world.running():
        original, video = await private_video_in_dm(world)
        assert world.bot is not None
        guild = world.bot.get_guild(int(world.discord.guild_id))
        assert guild is not None
        assert guild.get_member(original.user_id) is None  # not cached: the roles are asked of Discord
        world.discord.fail_next("GET", r"^/guilds/\d+/members/\d+$", 403, 50001)
        pressed = await world.discord.press(f"video:reroll:{original.id}", video, dm=True)
        answer = await private_answer(pressed)
        assert len(await world.resources.store.jobs_in(STATES)) == 1
    assert "did not tell me your roles" in answer and "Nothing was sent or charged" in answer
