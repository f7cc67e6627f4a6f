"""Re-roll's final answer does not wait for the new job's card: the member is told once the job is reserved, and
the card (in a parent channel, under its 5 posts per 5 s) is posted afterwards, one at a time per channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.model import Job
from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.fakes.discord.ratelimits import Limit
from tests.harness import Harness, harness

CARD_POSTS = "POST /channels/{channel_id}/messages"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


async def a_delivered_video(world: Harness) -> tuple[Job, str]:
    """Alice's delivered video and the id of its message (in the job's thread), where Re-roll is pressed."""
    fake = world.discord
    await fake.slash("video", {"prompt": "a heron, again"}, sub="text")
    first = await world.job_in("delivered")
    [thread] = fake.threads()
    video = next(m for m in fake.messages[thread["id"]] if m["files"])
    return first, video["id"]


def everything_said(fake: FakeDiscord, press: Interaction) -> str:
    """Every text the bot sent on this interaction, the later-edited ones included."""
    bodies = [r.json for r in fake.requests if press.token in r.path and isinstance(r.json, dict)]
    return " ".join(str(b.get("content") or (b.get("data") or {}).get("content") or "") for b in bodies)


def told(press: Interaction) -> str:
    return press.texts()[-1] if press.told_at is not None else ""


async def test_a_re_roll_pressed_while_the_channels_posts_are_used_up_is_answered_before_its_card(
    world: Harness,
) -> None:
    fake = world.discord
    async with world.running() as bot:
        first, video = await a_delivered_video(world)
        cards = len(fake.messages[fake.general])
        # The parent channel's posts are used up for the next 4 s (the bot's own post tells discord.py so, and
        # discord.py holds that post's call until the window resets: it runs in a task).
        fake.rate_limits, fake.route_limits = True, {CARD_POSTS: Limit(1, 4.0)}
        fake.reset_rate_limits()
        general = bot.get_partial_messageable(int(fake.general))
        used_up = asyncio.create_task(general.send("the channel's one post of this window"))
        cards += 1
        await wait_until(lambda: len(fake.messages[fake.general]) == cards)
        pressed = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: told(pressed) != "")
        answered_with, cards_then = told(pressed), len(fake.messages[fake.general])
        # Pressed again while the card still waits its turn: the first press is not over, so nothing new starts.
        again = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: told(again) != "")
        await wait_until(lambda: len(fake.messages[fake.general]) == cards + 1)  # the card, once the window reset
        await wait_until(lambda: len(world.sim.tasks) == 2)
        await wait_until(lambda: "<#" in told(pressed))  # the answer then points at the new job's thread
        await used_up
        await world.more_ticks(3)
        jobs = await world.resources.store.count_member_jobs(int(fake.guild_id), int(fake.users["alice"]["id"]))
    assert "on its way" in answered_with and "Cost:" in answered_with
    assert cards_then == cards  # told while the card was still waiting for the channel's limit
    assert "already" in told(again) and jobs == 2 and len(world.sim.tasks) == 2
    assert fake.rate_limited == []  # the waiting card was held back, not sent into a 429


async def test_a_re_roll_whose_card_is_refused_after_its_answer_is_told_its_credits_were_released(
    world: Harness,
) -> None:
    fake = world.discord
    async with world.running():
        first, video = await a_delivered_video(world)
        fake.fail_next("POST", rf"/channels/{fake.general}/messages$", 403, 50013, "Missing Permissions")
        pressed = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: "released" in told(pressed))
        await world.more_ticks(2)
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
        by_status = await world.resources.store.count_by_status()
    said = everything_said(fake, pressed)
    assert "on its way" in said  # told first, then corrected
    assert "charged" not in said  # its credits were held: never "nothing was charged"
    assert by_status == {"delivered": 1, "cancelled": 1}
    assert status.reserved == 0 and status.used == first.cost_estimate
    assert len(world.sim.tasks) == 1  # nothing sent for the refused card


async def test_a_re_roll_refused_by_the_provider_after_its_answer_is_told_why_and_charged_nothing(
    world: Harness,
) -> None:
    fake = world.discord
    async with world.running():
        first, video = await a_delivered_video(world)
        # The re-roll takes the stored prompt: one the provider refuses.
        assert await world.resources.store.update_job(
            first.id, "delivered", prompt="a forbidden heron", updated_at=first.updated_at
        )
        pressed = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: "content" in told(pressed))
        await wait_until(lambda: len(fake.messages[fake.general]) == 1)  # the refused job's card is taken down
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
        by_status = await world.resources.store.count_by_status()
    assert "on its way" in everything_said(fake, pressed)  # told first, then corrected with the reason
    assert "on its way" not in told(pressed)
    assert by_status == {"delivered": 1, "failed": 1}
    assert status.reserved == 0 and status.used == first.cost_estimate
