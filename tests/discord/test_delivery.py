"""Video delivery end to end: in the background, bounded, never twice at once, and around Discord's refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import discord
import pytest

from bot.app import VideoBot
from bot.core.model import Job, lease_of
from bot.storage.sqlite import Store
from cogs.poller import Poller
from tests.fake_discord import wait_until
from tests.fakes.discord.world import BOT_PERMISSIONS
from tests.harness import Harness, harness

SLOW = 0.5  # seconds per byte of a slow video link: its download never ends within a test
MARGIN = 1.5  # seconds, on top of one poll interval, for a video to land once its job is done


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def poller_of(bot: VideoBot) -> Poller:
    # An extension is loaded as a fresh module, so the cog is not an instance of the imported class.
    poller = cast(Poller, bot.get_cog("Poller"))
    assert poller is not None
    poller.stop_grace = 0.2  # a test ends with a slow download running: cancel it soon
    return poller


async def rendering(world: Harness, *prompts: str) -> list[Job]:
    """Ask for one video per prompt (the simulator holds them) and return their jobs once they have threads."""
    fake = world.discord
    world.sim.hold = True
    for prompt in prompts:
        await fake.slash("video", {"prompt": prompt}, sub="text")
    found: list[Job] = []

    async def all_rendering() -> bool:
        jobs = await world.resources.store.jobs_in(("submitted", "processing"))
        found[:] = sorted(jobs, key=lambda j: prompts.index(j.prompt))
        return len(jobs) == len(prompts) and all(j.thread_id and j.provider_task_id for j in jobs)

    await wait_until(all_rendering)
    return found


def output_of(world: Harness, job: Job) -> str:
    assert job.provider_task_id is not None
    return world.sim.tasks[job.provider_task_id].output_id


def videos_in(world: Harness, channel_id: int | str) -> list[dict[str, Any]]:
    """Messages in the channel that carry a job's video (its file or its link)."""
    return [m for m in world.discord.messages[str(channel_id)] if str(m.get("nonce") or "").startswith("kv")]


def video_posts(world: Harness, channel_id: int | str, job: Job) -> list[Any]:
    """Every request that tried to post this job's video in the channel."""
    return [
        r
        for r in world.discord.posted("POST", rf"/channels/{channel_id}/messages$")
        if (r.json or {}).get("nonce") == f"kv{job.id}"
    ]


async def status_of(world: Harness, job: Job, state: str) -> bool:
    current = await world.resources.store.get_job(job.id)
    return current is not None and current.status == state


async def test_a_slow_video_does_not_hold_up_a_later_one(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller = poller_of(bot)
        slow, fast = await rendering(world, "slow cdn", "quick one")
        sim.video_trickle_seconds = SLOW
        sim.finish(slow.provider_task_id)
        await wait_until(lambda: output_of(world, slow) in sim.video_requests)  # its download has begun
        sim.video_trickle_seconds = 0.0
        sim.finish(fast.provider_task_id)
        await wait_until(lambda: any(m["files"] for m in videos_in(world, fast.thread_id or 0)), within=0.05 + MARGIN)
        assert slow.id in poller.deliveries.running  # still downloading
        assert await status_of(world, slow, "succeeded") and videos_in(world, slow.thread_id or 0) == []
        await wait_until(lambda: status_of(world, fast, "delivered"))


async def test_a_discord_server_error_on_one_upload_does_not_delay_another(world: Harness) -> None:
    fake, sim = world.discord, world.sim
    async with world.running() as bot:
        poller_of(bot)
        flaky, steady = await rendering(world, "flaky upload", "steady upload")
        # discord.py retries a 500 itself, after 1 s and then 3 s more: this upload takes about 4 s.
        fake.fail_next("POST", rf"/channels/{flaky.thread_id}/messages$", 500, times=2)
        sim.finish(flaky.provider_task_id)
        await wait_until(lambda: video_posts(world, flaky.thread_id or 0, flaky))  # the first upload was refused
        sim.finish(steady.provider_task_id)
        await wait_until(lambda: videos_in(world, steady.thread_id or 0), within=0.05 + MARGIN)
        assert videos_in(world, flaky.thread_id or 0) == []  # still waiting out Discord's retries
        await wait_until(lambda: status_of(world, flaky, "delivered"), within=10)
    assert len(video_posts(world, flaky.thread_id or 0, flaky)) == 3
    assert len(videos_in(world, flaky.thread_id or 0)) == 1


async def test_a_tick_and_callback_hints_never_download_a_job_twice_at_once(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller = poller_of(bot)
        [job] = await rendering(world, "raced")
        assert job.provider_task_id is not None
        sim.video_trickle_seconds = SLOW
        sim.finish(job.provider_task_id)
        await asyncio.gather(*(poller.hint(job.provider_task_id) for _ in range(5)))  # while the loop ticks
        await wait_until(lambda: output_of(world, job) in sim.video_requests)
        ticks = poller.tick.current_loop
        await wait_until(lambda: poller.tick.current_loop >= ticks + 5)  # five more ticks saw it `succeeded`
        await poller.hint(job.provider_task_id)
        assert sim.video_requests.count(output_of(world, job)) == 1 and job.id in poller.deliveries.running


async def test_a_job_whose_claim_ran_out_mid_download_is_not_downloaded_again_here(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller = poller_of(bot)
        [job] = await rendering(world, "paused past its claim")
        assert job.provider_task_id is not None
        sim.video_trickle_seconds = SLOW
        sim.finish(job.provider_task_id)
        await wait_until(lambda: output_of(world, job) in sim.video_requests)
        # The process paused past the claim (its renewals late): the next tick claims the job again, as abandoned.
        expired = {"lease_until": time.time() - 1, "updated_at": time.time()}
        assert await world.resources.store.transition(job.id, "succeeded", "succeeded", **expired)
        claimed = (await world.resources.store.get_job(job.id) or job).lease_attempt

        async def claimed_again() -> bool:
            current = await world.resources.store.get_job(job.id)
            return current is not None and current.lease_attempt > claimed

        await wait_until(claimed_again)
        await world.more_ticks()
        assert sim.video_requests.count(output_of(world, job)) == 1 and job.id in poller.deliveries.running


async def test_a_hint_for_a_job_still_held_by_its_intake_is_asked_again_once_it_is_free(world: Harness) -> None:
    # The intake marks a job `submitted` and lets go of it a moment later; a callback can come in between. The
    # ordinary poll is five minutes away here, so only the hint, asked again once the claim is free, delivers it.
    world.settings_overrides["poll_interval_seconds"] = 300
    sim = world.sim
    async with world.running() as bot:
        poller, store = poller_of(bot), bot.resources.store
        [job] = await rendering(world, "called back too soon")
        assert job.provider_task_id is not None
        [held] = await store.claim_jobs(
            ("submitted", "processing"), owner="intake", now=time.time(), seconds=60, limit=1, ids=[job.id]
        )
        sim.finish(job.provider_task_id)
        handled = poller.hints_handled
        await poller.hint(job.provider_task_id)
        await wait_until(lambda: poller.hints_handled > handled)  # looked up, and skipped: the intake holds it
        lease = lease_of(held)
        assert lease is not None
        await store.release_leases([(job.id, lease)], time.time())
        await wait_until(lambda: videos_in(world, job.thread_id or 0), within=10)
    assert sim.video_requests.count(output_of(world, job)) == 1


async def test_racing_hints_and_ticks_deliver_a_job_once(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller = poller_of(bot)
        [job] = await rendering(world, "raced quickly")
        assert job.provider_task_id is not None
        sim.finish(job.provider_task_id)
        await asyncio.gather(*(poller.hint(job.provider_task_id) for _ in range(5)))
        await wait_until(lambda: videos_in(world, job.thread_id or 0))
        ticks = poller.tick.current_loop
        await wait_until(lambda: poller.tick.current_loop >= ticks + 5)
    assert sim.video_requests.count(output_of(world, job)) == 1
    assert len(video_posts(world, job.thread_id or 0, job)) == 1


async def test_without_attach_files_the_link_is_posted_at_once(world: Harness) -> None:
    fake = world.discord
    fake.bot_overwrites = True  # the bot's cache knows its permissions
    world.sim.hold = True
    async with world.running() as bot:
        await fake.slash("video", {"prompt": "no attachments here"}, sub="text")
        await world.job_in("submitted", "processing")
        # A moderator takes Attach Files away while the video renders (the command checked it was there).
        lacking = BOT_PERMISSIONS.value & ~discord.Permissions(attach_files=True).value
        await fake.set_bot_permissions(fake.general, lacking)
        channel = bot.get_channel(int(fake.general))
        assert isinstance(channel, discord.TextChannel)
        await wait_until(lambda: not channel.permissions_for(channel.guild.me).attach_files)
        world.sim.hold = False
        world.sim.finish()
        job = await world.job_in("delivered")
    [post] = video_posts(world, job.thread_id or 0, job)
    assert post.files == []
    [video] = videos_in(world, job.thread_id or 0)
    assert job.video_url in video["content"] and "not allowed to attach files" in video["content"]
    assert world.sim.video_requests == []  # nothing was downloaded for a file that could not be posted
    assert job.delivery_attempts == 0


async def test_a_refused_upload_falls_back_to_the_link_in_the_same_try(world: Harness) -> None:
    fake = world.discord
    async with world.running() as bot:
        poller_of(bot)
        [job] = await rendering(world, "refused upload")
        fake.fail_next("POST", rf"/channels/{job.thread_id}/messages$", 403, 50013, "Missing Permissions")
        world.sim.finish(job.provider_task_id)
        delivered = await world.job_in("delivered")
    file_post, link_post = video_posts(world, job.thread_id or 0, job)
    assert file_post.files and link_post.files == []
    [video] = videos_in(world, job.thread_id or 0)
    assert str(delivered.video_url) in video["content"] and delivered.delivery_attempts == 1


async def test_a_deleted_thread_gets_its_video_in_the_channel(world: Harness) -> None:
    fake = world.discord
    alice = fake.users["alice"]["id"]
    async with world.running() as bot:
        poller_of(bot)
        [job] = await rendering(world, "lost thread")
        fake.delete_channel(str(job.thread_id))
        world.sim.finish(job.provider_task_id)
        delivered = await world.job_in("delivered")
        card = fake.messages[fake.general][0]
        assert card["id"] == str(job.message_id)
        await wait_until(lambda: any(f["name"] == "Video" for f in card["embeds"][0]["fields"]))
    assert len(video_posts(world, job.thread_id or 0, job)) == 1  # a 404 is not tried again
    [video] = videos_in(world, fake.general)
    assert video["files"] and video["content"].startswith(f"<@{alice}> your video is ready.")
    assert "thread was deleted" in video["content"]
    assert video["allowed_mentions"] == {"parse": [], "users": [int(alice)]}
    assert "message_reference" not in video
    [field] = [f for f in card["embeds"][0]["fields"] if f["name"] == "Video"]
    assert f"/{fake.guild_id}/{fake.general}/{video['id']}" in field["value"]
    assert delivered.result_message_id == int(video["id"]) and delivered.thread_id is None


async def test_a_deleted_card_does_not_stop_delivery_and_a_live_card_links_the_video(world: Harness) -> None:
    fake = world.discord
    async with world.running() as bot:
        poller_of(bot)
        first, second = await rendering(world, "card gone", "card kept")
        fake.messages[fake.general] = [m for m in fake.messages[fake.general] if m["id"] != str(first.message_id)]
        world.sim.finish()
        await wait_until(lambda: videos_in(world, first.thread_id or 0) and videos_in(world, second.thread_id or 0))
        [card] = fake.messages[fake.general]
        await wait_until(lambda: any(f["name"] == "Video" for f in card["embeds"][0]["fields"]))
    [video] = videos_in(world, second.thread_id or 0)
    [field] = [f for f in card["embeds"][0]["fields"] if f["name"] == "Video"]
    assert f"/{fake.guild_id}/{second.thread_id}/{video['id']}" in field["value"]


async def test_stopping_mid_download_leaves_the_job_for_the_restart_which_delivers_once(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller = poller_of(bot)
        poller.deliverer.time_limit = 2.0  # longer than the grace period: the stop must cancel the download
        [job] = await rendering(world, "interrupted")
        sim.video_trickle_seconds = SLOW
        sim.finish(job.provider_task_id)
        await wait_until(lambda: output_of(world, job) in sim.video_requests)
        running = list(poller.deliveries.running.values())
        stopping = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - stopping < 1.5  # the grace period, not the whole download
    assert len(running) == 1 and running[0].cancelled()
    store = await Store.open(world.database)
    try:
        stopped = await store.get_job(job.id)
    finally:
        await store.close()
    assert stopped is not None and stopped.status == "succeeded" and stopped.delivery_attempts == 0
    sim.video_trickle_seconds = 0.0
    async with world.running() as bot:
        delivered = await world.job_in("delivered")
        ticks = poller_of(bot).tick.current_loop
        await wait_until(lambda: poller_of(bot).tick.current_loop >= ticks + 5)  # nothing more may be posted
    assert delivered.id == job.id
    [video] = videos_in(world, job.thread_id or 0)
    assert video["files"] and len(video_posts(world, job.thread_id or 0, job)) == 1
    assert sim.video_requests.count(output_of(world, job)) == 2  # the cancelled download, then the one posted


async def test_a_stalled_download_is_cut_off_at_the_time_limit(world: Harness) -> None:
    sim = world.sim
    async with world.running() as bot:
        poller_of(bot).deliverer.time_limit = 0.3
        [stalled] = await rendering(world, "stalled link")
        sim.video_trickle_seconds = SLOW
        sim.finish(stalled.provider_task_id)
        await wait_until(lambda: status_of(world, stalled, "failed"))  # three tries, each cut off
        failed = await world.resources.store.get_job(stalled.id)
    assert failed is not None and "timed out" in (failed.error or "")
    assert sim.video_requests.count(output_of(world, stalled)) == 3


async def test_a_deleted_thread_whose_channel_refuses_too_leaves_the_link_and_the_loop_goes_on(
    world: Harness,
) -> None:
    fake = world.discord
    async with world.running() as bot:
        poller_of(bot)
        [lost] = await rendering(world, "nowhere to post")
        fake.delete_channel(str(lost.thread_id))
        # Both the file and then the link are refused in the channel.
        fake.fail_next("POST", rf"/channels/{fake.general}/messages$", 403, 50013, "Missing Permissions", times=2)
        world.sim.finish(lost.provider_task_id)
        await wait_until(lambda: status_of(world, lost, "undeliverable"))
        world.sim.hold = False
        await fake.slash("video", {"prompt": "next one"}, sub="text")
        await world.job_in("delivered")
        status = await fake.slash("video", {"job": lost.id[:8]}, sub="status")
        await wait_until(lambda: status.texts() and "Loading" not in status.texts()[0] and status.texts()[0])
        undeliverable = await world.resources.store.get_job(lost.id)
    assert undeliverable is not None and "thread was deleted" in (undeliverable.error or "")
    assert len(video_posts(world, lost.thread_id or 0, lost)) == 1
    assert len(video_posts(world, fake.general, lost)) == 2 and videos_in(world, fake.general) == []
    assert str(undeliverable.video_url) in status.texts()[0]
