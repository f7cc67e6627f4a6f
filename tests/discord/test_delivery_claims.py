"""A delivery posts only while it holds its job's claim: a lost renewal stops it, a fenced check precedes the post,
and its record is fenced too. The worker's slots are given back whatever happens to a delivery."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import JobService
from bot.core.model import Job
from cogs.delivery import DeliveryWorker
from tests.fake_discord import wait_until
from tests.harness import Harness, harness
from tests.storage.test_leases import video_posts
from tests.storage.test_store_contract import BLANK

pytest_plugins = ["tests.postgres"]

OTHER = "another-process:1:cafe"


async def take_over(world: Harness, job_id: str) -> None:
    """Another process's claim on the job, as when this one paused past its lease: a new holder, the next attempt."""
    store = world.resources.store
    current = await store.get_job(job_id)
    assert current is not None
    assert await store.update_job(
        job_id,
        "succeeded",
        lease_owner=OTHER,
        lease_attempt=current.lease_attempt + 1,
        lease_until=time.time() + 600,
        updated_at=time.time(),
    )


async def downloading(world: Harness) -> Job:
    """Make a video whose download the simulator holds; the job once its delivery waits for the video."""
    world.poller().stop_grace = 0.5  # a delivery still running when the test ends is cancelled soon
    world.sim.hold_videos()
    await world.discord.slash("video", {"prompt": "a delivery that loses its claim"}, sub="text")
    await wait_until(lambda: world.sim.video_requests)
    [job] = await world.resources.store.jobs_in(("succeeded",))
    assert job.id in world.poller().deliveries.running
    return job


async def still_the_other_ones(world: Harness, job_id: str) -> Job:
    current = await world.resources.store.get_job(job_id)
    assert current is not None
    assert (current.status, current.lease_owner, current.result_message_id) == ("succeeded", OTHER, None)
    return current


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_delivery_whose_claim_is_found_lost_while_it_downloads_stops_and_posts_nothing(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    async with harness(tmp_path) as world:
        if database == "postgres":
            world.settings_overrides = {"database_url": request.getfixturevalue("postgres_dsn")}
        async with world.running() as bot:
            bot.resources.jobs.lease_seconds = 0.6  # renewed every 0.2 s
            job = await downloading(world)
            await take_over(world, job.id)
            deliveries = world.poller().deliveries
            # The download is still held: only the renewal finding the claim lost can end this delivery.
            await wait_until(lambda: job.id not in deliveries.running, within=5)
            world.sim.release_videos()
            await world.more_ticks()
            await still_the_other_ones(world, job.id)
        assert video_posts(world.discord, job.id) == []


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_deliverer_that_lost_its_claim_before_its_renewal_noticed_posts_nothing(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    async with harness(tmp_path) as world:
        if database == "postgres":
            world.settings_overrides = {"database_url": request.getfixturevalue("postgres_dsn")}
        async with world.running():
            job = await downloading(world)  # renewed every 20 s: no renewal runs in this test
            await take_over(world, job.id)  # as if it paused here, past its lease, and was taken over
            world.sim.release_videos()
            deliveries = world.poller().deliveries
            await wait_until(lambda: job.id not in deliveries.running)
            await still_the_other_ones(world, job.id)
        assert video_posts(world.discord, job.id) == []  # the fenced check before the post refused it


async def test_a_deliverer_that_lost_its_claim_during_its_post_leaves_the_record_to_the_new_holder(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as world:
        fake, sim = world.discord, world.sim
        async with world.running():
            store = world.resources.store
            sim.hold = True
            await fake.slash("video", {"prompt": "a slow post"}, sub="text")
            job = await world.job_in("submitted", "processing")

            async def card_done() -> bool:
                current = await store.get_job(job.id)
                return current is not None and current.status_message_id is not None

            await wait_until(card_done)
            fake.delay_next("POST", r"/channels/\d+/messages$", 1.0)
            sim.hold = False
            await wait_until(lambda: video_posts(fake, job.id))  # past the fenced check, Discord taking the post
            await take_over(world, job.id)
            deliveries = world.poller().deliveries
            await wait_until(lambda: job.id not in deliveries.running)
            await still_the_other_ones(world, job.id)  # the new holder finds the post in the thread, and records it
        assert len(video_posts(fake, job.id)) == 1


class FlakyJobs:
    """The job service, whose `get` fails once with an error nobody expects (the database went away)."""

    def __init__(self, real: JobService) -> None:
        self.real = real
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def get(self, job_id: str) -> Job | None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the database went away")
        return await self.real.get(job_id)


class RecordingDeliverer:
    def __init__(self, jobs: FlakyJobs) -> None:
        self.jobs = jobs
        self.delivered: list[str] = []

    async def deliver(self, job: Job, *, resumed: bool = False) -> None:
        self.delivered.append(job.id)


async def test_an_unexpected_error_in_a_delivery_gives_its_slot_back(service: JobService) -> None:
    for name in ("first", "second"):
        await service.store.add_job(replace(BLANK, id=name, status="succeeded", video_url="http://example.com/v.mp4"))
    claimed = [job for job, _ in await service.claim_deliveries(2)]
    assert [job.id for job in claimed] == ["first", "second"]
    deliverer = RecordingDeliverer(FlakyJobs(service))

    async def done(job_id: str) -> None:
        return None

    worker = DeliveryWorker(deliverer, done, parallel=1)  # type: ignore[arg-type]
    assert worker.schedule(claimed[0])
    failed = worker.running["first"]
    await asyncio.wait([failed])
    assert isinstance(failed.exception(), RuntimeError)  # it failed inside its slot
    assert worker.schedule(claimed[1])
    await wait_until(lambda: deliverer.delivered == ["second"], within=5)  # one slot, and it came back
    await wait_until(lambda: not worker.running)
    assert not worker.limit.locked() and worker.room() == 1
