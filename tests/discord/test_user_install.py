"""The bot as a user app: installed to a member, used in a server the bot is not in. There it cannot post or open
threads and Discord caps an interaction's follow-ups at five, so a job is private (answers by follow-up, the video
by DM) and spends the member's personal quota (PERSONAL_QUOTA_CREDITS)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.core.credits import PERSONAL
from tests.fake_discord import Interaction, wait_until
from tests.fakes.discord.wire import FOLLOWUP_LIMIT
from tests.harness import Harness, harness, private_answer

BOTS_FOLLOWUPS = 3  # the most follow-ups the bot spends on one interaction (Discord allows five here)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        h.settings_overrides["personal_quota_credits"] = 4.0  # one 5 s 720p video (0.8 credits a second)
        yield h


def public_messages(world: Harness) -> list[dict[str, Any]]:
    """Every message the bot holds in a server's channel or thread, the server without the bot included."""
    fake = world.discord
    return [m for channel, ms in fake.messages.items() if channel not in fake.dm_channels for m in ms]


def buttons(message: dict[str, Any]) -> list[str]:
    return [item.get("custom_id", "") for row in message.get("components") or [] for item in row["components"]]


async def make_elsewhere(world: Harness, prompt: str = "a kite over dunes") -> Interaction:
    return await world.discord.slash("video", {"prompt": prompt, "duration": 5}, sub="text", elsewhere=True)


async def test_the_synced_commands_offer_the_user_install(world: Harness) -> None:
    async with world.running() as bot:
        await bot.tree.sync()
    synced = {c["name"]: c for c in world.discord.commands[None]}
    for name in ("video", "quota"):
        assert synced[name]["integration_types"] == [0, 1], name
        assert synced[name]["contexts"] == [0, 1, 2], name
    assert synced["quota-admin"]["integration_types"] == [0]
    assert synced["quota-admin"]["contexts"] == [0]


async def test_a_user_install_in_a_server_without_the_bot_sends_the_video_by_dm(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        sent = await make_elsewhere(world)
        told = await private_answer(sent)
        job = await world.job_in("delivered")
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
        quota = await private_answer(await fake.slash("quota", {}, elsewhere=True))
        alice = int(fake.users["alice"]["id"])
        assert await world.resources.store.count_member_jobs(PERSONAL, alice) == 1
        server = int(next(iter(fake.without_bot)))
        assert await world.resources.store.count_member_jobs(server, alice) == 0
    assert job.guild_id == PERSONAL and job.private and job.delivered_via == "dm"
    assert "direct message" in told and "on its way" in told
    video = next(m for m in fake.dms("alice") if m["files"])
    assert buttons(video)
    # Nothing public: no card, no thread, no log line, nothing tried in the server the bot is not in.
    assert public_messages(world) == [] and fake.threads() == []
    assert not [r for r in fake.posted("POST") if f"/channels/{fake.elsewhere()}/" in r.path]
    assert all(m["flags"] & 64 for m in sent.messages) and len(sent.followups) <= BOTS_FOLLOWUPS
    assert "personal credits" in quota


async def test_a_closed_dm_gets_the_video_as_a_follow_up_within_the_cap(world: Harness) -> None:
    fake = world.discord
    fake.close_dms("alice")
    async with world.running():
        sent = await make_elsewhere(world)
        await private_answer(sent)
        job = await world.job_in("delivered", "undeliverable")
        await wait_until(lambda: any(m["attachments"] for m in sent.messages))
    assert job.status == "delivered" and job.delivered_via == "followup"
    video = next(m for m in sent.messages if m["attachments"])
    assert video["flags"] & 64 and buttons(video)
    assert public_messages(world) == [] and fake.dms("alice") == []
    assert len(sent.followups) <= BOTS_FOLLOWUPS


async def test_without_a_personal_quota_it_is_refused_and_nothing_is_charged(world: Harness) -> None:
    world.settings_overrides["personal_quota_credits"] = 0.0
    async with world.running():
        refused = await private_answer(await make_elsewhere(world))
        assert await world.resources.store.jobs_in(("reserved", "queued", "submitted", "processing")) == []
        alice = int(world.discord.users["alice"]["id"])
        assert await world.resources.store.count_member_jobs(PERSONAL, alice) == 0
    assert "not in this server" in refused and "Nothing was charged" in refused
    assert world.sim.tasks == {} and public_messages(world) == []


async def test_buttons_under_the_dm_video_work_on_the_personal_quota(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides["personal_quota_credits"] = 12.0  # three 5 s videos
    async with world.running():
        await make_elsewhere(world)
        first = await world.job_in("delivered")
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
        video = next(m for m in fake.dms("alice") if m["files"])
        pressed = await fake.press(f"video:reroll:{first.id}", video, dm=True)
        assert "on its way" in await private_answer(pressed)
        await wait_until(lambda: sum(1 for m in fake.dms("alice") if m["files"]) == 2)
        edit = await fake.press(f"video:edit:{first.id}", video, dm=True)
        await wait_until(lambda: edit.modal is not None)
        assert "on its way" in await private_answer(await fake.submit_modal(edit, {"Prompt": "a kite at night"}))
        alice = int(fake.users["alice"]["id"])
        store = world.resources.store

        async def three_delivered() -> bool:
            return len(await store.member_jobs(PERSONAL, alice, statuses=("delivered",), limit=10, offset=0)) == 3

        await wait_until(three_delivered)
        jobs = await store.member_jobs(PERSONAL, alice, statuses=None, limit=10, offset=0)
        assert len(jobs) == 3 and all(j.status == "delivered" and j.private for j in jobs)
        assert sum(1 for m in fake.dms("alice") if m["files"]) == 3
        [edited] = [j for j in jobs if j.prompt == "a kite at night"]
        assert edited.edited_from == first.id
    assert public_messages(world) == [] and fake.threads() == []


async def test_the_fake_refuses_the_sixth_follow_up_where_only_the_user_install_is(world: Harness) -> None:
    fake = world.discord
    async with world.running(), aiohttp.ClientSession() as session:
        sent = await fake.slash("quota", {}, elsewhere=True)
        await private_answer(sent)
        url = f"{fake.api_base}/webhooks/{fake.application_id}/{sent.token}"
        statuses = []
        for n in range(FOLLOWUP_LIMIT + 1):
            async with session.post(url, json={"content": f"follow-up {n}", "flags": 64}) as answer:
                statuses.append((answer.status, (await answer.json()).get("code")))
    assert statuses[:FOLLOWUP_LIMIT] == [(200, None)] * FOLLOWUP_LIMIT
    assert statuses[FOLLOWUP_LIMIT] == (400, 40094)


@pytest.mark.parametrize("where", ["elsewhere", "group_dm"])
async def test_a_video_that_reached_no_one_is_told_at_the_next_command_there(world: Harness, where: str) -> None:
    fake = world.discord
    fake.close_dms("alice")
    world.sim.hold = True
    there = {where: True}  # a server without the bot, or a group DM
    async with world.running():
        sent = await fake.slash("video", {"prompt": "a kite over dunes", "duration": 5}, sub="text", **there)
        await private_answer(sent)
        job = await world.job_in("submitted", "processing")
        store = world.resources.store
        assert await store.update_job(job.id, ("submitted", "processing"), followup_until=0.0, updated_at=time.time())
        world.sim.hold = False
        job = await world.job_in("undeliverable")
        assert job.delivered_via == "none"
        status = await fake.slash("video", sub="status", **there)
        await wait_until(lambda: any("could not reach you" in t for t in status.texts()))
        again = await fake.slash("video", sub="status", **there)
        await private_answer(again)
        await world.handlers_done()  # the note would come after the answer
    assert not any("could not reach you" in t for t in again.texts())
    assert all(m["flags"] & 64 for m in status.messages) and len(status.followups) <= BOTS_FOLLOWUPS
    assert public_messages(world) == [] and len(sent.followups) <= BOTS_FOLLOWUPS


async def test_a_user_install_in_a_group_dm_sends_the_video_by_dm(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        sent = await fake.slash("video", {"prompt": "a lantern", "duration": 5}, sub="text", group_dm=True)
        told = await private_answer(sent)
        job = await world.job_in("delivered")
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
    assert job.guild_id == PERSONAL and job.private and job.delivered_via == "dm"
    assert "direct message" in told
    group = sent.payload["channel_id"]
    assert not [r for r in fake.posted("POST") if f"/channels/{group}/" in r.path]
    assert public_messages(world) == [] and len(sent.followups) <= BOTS_FOLLOWUPS


async def test_a_server_with_the_commands_but_not_the_bot_is_outside_it_too(world: Harness) -> None:
    """Installed to a server with only the commands scope: Discord names the guild install, but the bot is not a
    member there (not in its cache), so it cannot post either."""
    fake = world.discord
    async with world.running():
        sent = await fake.slash("video", {"prompt": "a tide pool", "duration": 5}, sub="text", channel=fake.elsewhere())
        assert "0" in sent.payload["authorizing_integration_owners"]
        await private_answer(sent)
        job = await world.job_in("delivered")
        await wait_until(lambda: any(m["files"] for m in fake.dms("alice")))
    assert job.guild_id == PERSONAL and job.private
    assert public_messages(world) == [] and fake.threads() == []
