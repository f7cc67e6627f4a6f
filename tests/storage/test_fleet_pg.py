"""Several processes on one PostgreSQL database share the background work: every job is submitted once, posted
once and charged once, and PROVIDER_CONCURRENCY holds for the fleet. Two services (or two whole bots) in one test
process stand for two processes: each has its own connection pool, HTTP session and owner name on its claims."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from bot.app import VideoBot
from bot.core.jobs import JobRequest, JobService
from bot.provider.kling import KlingClient
from bot.provider.sim_variant import GatewayVariant
from bot.provider.sim_videos import sample_video
from bot.provider.simulator import KlingSimulator
from bot.resources import open_resources
from bot.storage.postgres import PgStore
from cogs.delivery import post_nonce
from tests.conftest import API_KEY, FakeClock
from tests.core.test_adaptive import the_other_polls_after_the_read
from tests.fake_discord import wait_until
from tests.harness import Harness, harness

pytest_plugins = ["tests.postgres"]


@contextlib.asynccontextmanager
async def services(dsn: str, sim: KlingSimulator, count: int, **options: object) -> AsyncIterator[list[JobService]]:
    """`count` job services as separate processes would have them: a pool, a session, a client and a name each."""
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            store = await PgStore.open(dsn)
            stack.push_async_callback(store.close)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            client = KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY))
            made.append(JobService(store, client, **options))  # type: ignore[arg-type]
        yield made


def queried(sim: KlingSimulator) -> Iterator[str]:
    """Every task id the simulator was asked about, once per time it was asked."""
    for request in sim.requests:
        yield from (i for i in request.query.get("task_ids", "").split(",") if i)


async def test_two_services_polling_at_once_ask_about_each_job_once(postgres_dsn: str, sim: KlingSimulator) -> None:
    sim.hold = True  # they stay at the provider
    async with services(postgres_dsn, sim, 2, provider_concurrency=100) as (first, second):
        jobs = [await first.create(JobRequest("text", f"clip {n}")) for n in range(40)]
        assert {job.status for job in jobs} <= {"submitted", "processing"}
        sim.requests.clear()
        # Slow answers keep the first tick's claims held while the other claims: ticks at once, however fast a
        # tick is (two ticks one after the other each ask, as they should).
        sim.fail_next("slow", on="query", times=4, delay=0.5)
        await asyncio.gather(first.poll_once(), second.poll_once())
        asked = list(queried(sim))
        assert sorted(asked) == sorted(job.provider_task_id for job in jobs)  # each once, by one of the two
        leftover = await first.store.claim_jobs(("submitted", "processing"), owner="x", now=0, seconds=60, limit=99)
        # Held by its command (1), then by one poller (2), released after the tick: free for this claim (3).
        assert len(leftover) == 40 and {job.lease_attempt for job in leftover} == {3}


async def an_interval_passed(store: PgStore, seconds: float) -> None:
    """Every job was last asked about `seconds` earlier, in the database's terms (its clock spaces the questions)."""
    async with store.transaction() as db:
        await db.execute("UPDATE jobs SET asked_at = asked_at - %s", (seconds,))


async def test_three_services_polling_over_several_intervals_ask_about_each_job_once_per_interval(
    postgres_dsn: str, sim: KlingSimulator
) -> None:
    sim.hold = True
    async with services(postgres_dsn, sim, 3, provider_concurrency=100, poll_interval=60.0) as fleet:
        jobs = [await fleet[0].create(JobRequest("text", f"clip {n}")) for n in range(20)]
        sim.requests.clear()
        for _ in range(3):
            for service in fleet:  # within one interval: each process ticks one after another, then all at once
                await service.poll_once()
            await asyncio.gather(*(service.poll_once() for service in fleet))
            await an_interval_passed(fleet[0].store, 60.0)
    assert Counter(queried(sim)) == {job.provider_task_id: 3 for job in jobs}  # once per interval, not per process


async def test_a_process_that_read_before_another_asked_and_claims_after_it_released_does_not_ask_again(
    postgres_dsn: str, sim: KlingSimulator
) -> None:
    sim.hold = True
    async with services(postgres_dsn, sim, 2, provider_concurrency=100, poll_interval=60.0) as (first, second):
        jobs = [await first.create(JobRequest("text", f"clip {n}")) for n in range(20)]
        sim.requests.clear()
        await the_other_polls_after_the_read(second, first)
    assert Counter(queried(sim)) == {job.provider_task_id: 1 for job in jobs}


async def test_a_process_whose_clock_is_behind_does_not_make_the_fleet_ask_again_sooner(
    postgres_dsn: str, sim: KlingSimulator
) -> None:
    sim.hold = True
    async with services(postgres_dsn, sim, 1, provider_concurrency=100, poll_interval=60.0) as [right]:
        behind = JobService(
            right.store, right.kling, owner="behind", poll_interval=60.0, clock=lambda: time.time() - 600
        )
        jobs = [await right.create(JobRequest("text", f"clip {n}")) for n in range(5)]
        sim.requests.clear()
        await behind.poll_once()  # ten minutes slow: its question is still stamped with the database's time
        await right.poll_once()  # so the others know it was just now, and do not ask again
        assert Counter(queried(sim)) == {job.provider_task_id: 1 for job in jobs}
        await an_interval_passed(right.store, 60.0)
        await right.poll_once()  # an interval later in the database's terms: asked again, once
    assert Counter(queried(sim)) == {job.provider_task_id: 2 for job in jobs}


async def test_forty_jobs_dispatched_by_two_services_at_once_never_hold_more_than_three_slots(
    postgres_dsn: str,
) -> None:
    sim = KlingSimulator(api_key=API_KEY, endpoint_path="acct-endpoint", render_seconds=0.15)
    await sim.start()
    try:
        async with services(postgres_dsn, sim, 2, provider_concurrency=3) as (first, second):
            first.kling.breaker.opened_at = first.kling.breaker.clock()  # down: the jobs wait in the queue
            made = [
                await first.create(JobRequest("text", f"q{n}", wait_if_unavailable=True, user_id=n % 5))
                for n in range(40)
            ]
            assert {job.status for job in made} == {"queued"}
            first.kling.breaker.opened_at = None

            async def both_ticked_and_all_done() -> bool:
                await asyncio.gather(first.poll_once(), second.poll_once())
                return await first.store.count_in(("succeeded",)) == 40

            await wait_until(both_ticked_and_all_done, within=60)
    finally:
        await sim.close()
    assert sim.most_at_once == 3  # the fleet filled its three slots, and never held a fourth
    assert len(sim.tasks) == 40 and all(len(sim.tasks_for(job.id)) == 1 for job in made)  # each submitted once


async def test_a_command_that_paused_past_its_claim_never_sends_the_job_another_process_is_sending(
    postgres_dsn: str, sim: KlingSimulator, clock: FakeClock
) -> None:
    sim.variant = GatewayVariant(dedupe_external_ids=False)  # a gateway that would make (and bill) a second task
    async with services(postgres_dsn, sim, 2, clock=clock) as (paused, other):
        job = await paused.reserve(JobRequest("text", "a command that stalled"))
        clock.advance(paused.reserved_grace + 1)  # its process stalled (posting the card) past its claim
        # ... in the database's terms too (its leases use its own clock)
        assert await paused.store.update_job(job.id, "reserved", lease_until=0.0, updated_at=job.updated_at)
        sim.fail_next("slow", on="submit", delay=0.5)
        sending = asyncio.create_task(other.poll_once())  # another process takes the job over and sends it

        async def being_sent() -> bool:
            current = await other.get(job.id)
            return current is not None and current.attempts == 1

        await wait_until(being_sent)
        woke = await paused.start(job)  # the stalled command goes on, with its old claim
        await sending
    assert woke.status == "reserved" and woke.lease_owner == other.owner  # left to the process holding it
    assert sum(1 for r in sim.requests if r.method == "POST") == 1 and len(sim.tasks_for(job.id)) == 1


@contextlib.asynccontextmanager
async def second_bot(world: Harness) -> AsyncIterator[VideoBot]:
    """Another bot process on the same database and fakes (the harness runs the first)."""
    settings = world.settings()
    async with open_resources(settings, single_instance=True) as resources:
        bot = VideoBot(settings, resources, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), 10)
            yield bot
        finally:
            await bot.close()
            await task


async def test_two_bots_on_one_postgresql_submit_post_and_charge_each_video_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    count = 12
    async with harness(tmp_path) as world:
        fake, sim = world.discord, world.sim
        world.settings_overrides = {
            "database_url": postgres_dsn,
            "provider_concurrency": 3,
            "member_jobs_in_flight": 50,
            "server_jobs_in_flight": 50,
            "default_quota_credits": 1000,
        }
        sim.hold = True  # nothing finishes until both bots run
        async with world.running() as first:
            # The commands go to the first bot alone (the fake gateway sends each event to every connected bot).
            for n in range(count):
                await fake.slash("video", {"prompt": f"fleet {n}"}, sub="text", user=("alice", "bob", "mod")[n % 3])
            await wait_until(lambda: len(fake.threads()) == count)
            async with second_bot(world) as second:
                pollers = [bot.get_cog("Poller") for bot in (first, second)]
                # Downloads stall until both bots have deliveries under way: one bot's slots fill, the other takes
                # the rest (fast downloads would let whichever ticks first post everything).
                sim.hold_videos()
                sim.hold = False
                await wait_until(lambda: all(p.deliveries.started for p in pollers), within=30)  # type: ignore[union-attr]
                sim.release_videos()
                store = first.resources.store
                await wait_until(lambda: _all_delivered(store, count), within=60)
                started = [p.deliveries.started for p in pollers]  # type: ignore[union-attr]
            jobs = await store.jobs_in(("delivered",))
            usage = {
                name: await first.resources.credits.status(int(fake.guild_id), int(fake.users[name]["id"]), ())
                for name in ("alice", "bob", "mod")
            }
    assert len(jobs) == count
    assert sum(1 for r in sim.requests if r.method == "POST") == count  # one submit per video
    assert all(len(sim.tasks_for(job.id)) == 1 for job in jobs)
    assert sim.most_at_once <= 3
    for job in jobs:
        posts = [r for r in fake.posted("POST", r"/messages$") if (r.json or {}).get("nonce") == post_nonce(job.id)]
        videos = [m for m in fake.messages[str(job.thread_id)] if m["files"]]
        assert len(posts) == 1 and len(videos) == 1 and videos[0]["files"][0][1] == sample_video()
        assert job.result_message_id == int(videos[0]["id"])
    assert sum(status.used for status in usage.values()) == sum(job.cost_billed or 0 for job in jobs) == count * 4_000
    assert all(status.reserved == 0 and status.in_flight == 0 for status in usage.values())
    assert min(started) > 0, started  # both bots delivered some


async def _all_delivered(store: PgStore, count: int) -> bool:
    return await store.count_in(("delivered",)) == count
