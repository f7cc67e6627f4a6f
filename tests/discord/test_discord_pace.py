"""The bot itself paces its requests to Discord (the pace is installed on its HTTP session, not only written):
a burst of posts beyond its pace waits its turn instead of meeting Discord's global limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cogs.delivery import PARALLEL_DELIVERIES
from tests.fake_discord import FakeDiscord, wait_until
from tests.fakes.discord.ratelimits import GLOBAL_EXEMPT, Limit
from tests.fakes.discord.wire import Recorded
from tests.harness import harness

PACE = 4  # requests a second: the bot's setting here, one under the fake's global limit


async def burst_of_posts(tmp_path: Path, global_limit: int, late: int = 0) -> tuple[FakeDiscord, int]:
    """The bot posts once in each of 3 x PACE channels at once (no route limit met), the fake enforcing a global
    limit of `global_limit` a second and counting the first `late` posts 0.9 s after they were sent. Returns the
    fake and how many requests it had before the burst."""
    async with harness(tmp_path) as world:
        fake = world.discord
        world.settings_overrides = {"discord_requests_per_second": PACE}
        rooms = [fake.add_channel(f"room-{n}", 0) for n in range(3 * PACE)]
        async with world.running() as bot:
            fake.rate_limits, fake.global_limit, fake.route_limits = True, Limit(global_limit, 1.0), {}
            fake.reset_rate_limits()
            if late:
                fake.delay_next("POST", r"^/channels/\d+/messages$", 0.9, times=late)
            started = len(fake.requests)
            await asyncio.gather(*(bot.get_partial_messageable(int(room)).send("hi") for room in rooms))
    assert all(len(fake.messages[room]) == 1 for room in rooms)
    return fake, started


async def test_a_burst_of_posts_waits_for_the_bots_pace_and_meets_no_global_limit(tmp_path: Path) -> None:
    fake, started = await burst_of_posts(tmp_path, PACE + 1)
    burst = [r for r in fake.requests[started:] if not r.path.startswith(GLOBAL_EXEMPT)]
    assert len(burst) >= 3 * PACE
    assert [route for route, is_global in fake.rate_limited if is_global] == []


async def test_posts_that_reach_discord_late_still_meet_no_global_limit(tmp_path: Path) -> None:
    # Discord counts a request when it gets there, which may be long after the pace let it through (an upload, a busy
    # loop): the burst's first posts are counted late, so a pace counting from when it let them through would send
    # the next ones into the very second Discord is counting them in.
    fake, _ = await burst_of_posts(tmp_path, PACE, late=PACE)
    assert fake.rate_limited == []


async def test_with_the_pace_full_a_finished_videos_post_goes_before_the_card_edits_waiting(tmp_path: Path) -> None:
    # A delivered video costs its post (in its thread) and the edit of its card (in the channel) to link it. With the
    # pace at two requests a second, each delivery's card edit waits its turn while the next videos are being posted:
    # those posts take the free turns first, as the member waits for the video more than for the card saying so.
    videos = PARALLEL_DELIVERIES + 2  # the last ones start once a delivery is done: they join after its card edit
    async with harness(tmp_path) as world:
        fake = world.discord
        world.settings_overrides = {
            "member_jobs_in_flight": videos, "server_jobs_in_flight": videos, "provider_concurrency": videos,
            "default_quota_credits": 1000,
        }  # fmt: skip
        async with world.running() as bot:
            world.sim.hold = True
            for n in range(videos):
                await fake.slash("video", {"prompt": f"flood {n}"}, sub="text")
            await wait_until(lambda: len(world.sim.tasks) == videos)
            await world.more_ticks(3)  # every card and status message shown: nothing else is waiting for a turn
            bot.pace.limit = 2
            before = len(fake.requests)
            world.sim.finish()
            await wait_until(lambda: len(paced(fake.requests[before:], "PATCH")) == videos, within=60)
            bot.pace.limit = 45
    threads = {thread["id"] for thread in fake.threads()}
    order = [
        "video post" if r.method == "POST" and r.path.split("/")[2] in threads else f"{r.method} {r.path}"
        for r in paced(fake.requests[before:], "POST", "PATCH")
    ]
    assert order[:videos] == ["video post"] * videos, order
    assert all(kind.startswith("PATCH /channels/") for kind in order[videos:]), order  # then the card edits


def paced(requests: list[Recorded], *methods: str) -> list[Recorded]:
    """The requests with these methods that wait for the global pace (interaction answers do not)."""
    return [r for r in requests if r.method in methods and not r.path.startswith(GLOBAL_EXEMPT)]
