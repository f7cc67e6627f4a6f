"""Claims and leases as the bot lives them: a post an earlier deliverer made is found, not repeated."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.core.jobs import JobService
from bot.provider.kling import KlingClient
from bot.storage.postgres import PgStore
from cogs.delivery import post_nonce
from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import harness
from tests.storage.test_store_contract import BLANK

pytest_plugins = ["tests.postgres"]


def video_posts(fake: FakeDiscord, job_id: str) -> list[dict]:
    """Every request that asked Discord to post this job's video (answered or deduplicated alike)."""
    return [
        r for r in fake.posted("POST", r"/channels/\d+/messages$") if (r.json or {}).get("nonce") == post_nonce(job_id)
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_deliverer_that_stopped_after_its_post_reached_discord_is_not_repeated(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    async with harness(tmp_path) as world:
        if database == "postgres":
            world.settings_overrides = {"database_url": request.getfixturevalue("postgres_dsn")}
        fake = world.discord
        async with world.running():
            await fake.slash("video", {"prompt": "posted, then the deliverer stopped"}, sub="text")
            done = await world.job_in("delivered")
            [thread] = fake.threads()
            [video] = [m for m in fake.messages[thread["id"]] if m["files"]]
            await world.stop_deliverer_after_its_post(done)
            again = await world.job_in("delivered")
        assert again.id == done.id and again.result_message_id == int(video["id"])  # the post found and recorded
        assert len(video_posts(fake, done.id)) == 1  # never asked to post again (not even deduplicated)
        assert [m["id"] for m in fake.messages[thread["id"]] if m["files"]] == [video["id"]]


async def test_a_deliverer_that_cannot_read_the_thread_reposts_with_the_nonce_and_discord_keeps_one(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as world:
        fake = world.discord
        async with world.running():
            await fake.slash("video", {"prompt": "posted, then the deliverer stopped, history unreadable"}, sub="text")
            done = await world.job_in("delivered")
            [thread] = fake.threads()
            [video] = [m for m in fake.messages[thread["id"]] if m["files"]]
            # As above, but the thread's and the channel's history cannot be read (no Read Message History): the
            # post is not found, so only the nonce stands between the new deliverer and a second video.
            fake.fail_next("GET", rf"/channels/({thread['id']}|{fake.general})/messages$", 403, 50001, times=10)
            await world.stop_deliverer_after_its_post(done)
            again = await world.job_in("delivered")
        assert [m["id"] for m in fake.messages[thread["id"]] if m["files"]] == [video["id"]]  # Discord kept one
        assert again.result_message_id == int(video["id"])
        assert len(video_posts(fake, done.id)) == 2  # it was posted again, with the same nonce


async def test_a_delivery_keeps_its_claim_while_a_slow_upload_runs(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        fake, sim = world.discord, world.sim
        async with world.running() as bot:
            jobs, store = bot.resources.jobs, bot.resources.store
            jobs.lease_seconds = 0.3  # claims run out fast here, unless renewed
            other = JobService(store, bot.resources.kling, owner="another-process")  # shares the database
            sim.hold = True
            await fake.slash("video", {"prompt": "a slow upload"}, sub="text")
            job = await world.job_in("submitted", "processing")

            async def card_done() -> bool:
                current = await store.get_job(job.id)
                return current is not None and current.status_message_id is not None

            await wait_until(card_done)
            fake.delay_next("POST", r"/channels/\d+/messages$", 1.5)  # the video's upload takes five leases
            sim.hold = False
            await wait_until(lambda: video_posts(fake, job.id))  # the upload has begun
            taken: list = []

            async def delivered_or_taken() -> bool:
                taken.extend(await other.claim_deliveries(5))  # another process looks for work meanwhile
                current = await store.get_job(job.id)
                return bool(taken) or (current is not None and current.status == "delivered")

            await wait_until(delivered_or_taken)
        assert taken == []  # never free for the taking while it was being posted
        assert len(video_posts(fake, job.id)) == 1


async def locked_waits(monitor: psycopg.AsyncConnection[Any]) -> int:
    """Backends of this database waiting for a lock held by another transaction."""
    cursor = await monitor.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_a_claim_passes_over_a_row_another_transaction_holds_instead_of_waiting(postgres_dsn: str) -> None:
    store = await PgStore.open(postgres_dsn)
    try:
        for n in range(3):
            await store.add_job(replace(BLANK, id=f"r{n}", status="succeeded", created_at=100.0 + n))
        async with (
            await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as monitor,
            await psycopg.AsyncConnection.connect(postgres_dsn) as holder,
        ):
            # Another process's claim in the middle of its transaction: the oldest job's row is locked.
            await holder.execute("SELECT id FROM jobs WHERE id = 'r0' FOR UPDATE")
            claim = asyncio.create_task(
                store.claim_jobs(("succeeded",), owner="second", now=time.time(), seconds=60, limit=10)
            )
            try:
                await wait_until(lambda: claim.done() or locked_waits(monitor))
                assert claim.done(), "the claim waits for the row another transaction holds"
                assert [job.id for job in claim.result()] == ["r1", "r2"]
            finally:
                await holder.rollback()
                await asyncio.wait([claim])
    finally:
        await store.close()


async def test_a_process_whose_clock_is_ahead_cannot_take_a_job_whose_lease_is_live(
    postgres_dsn: str, kling: KlingClient
) -> None:
    store = await PgStore.open(postgres_dsn)
    try:
        await store.add_job(replace(BLANK, id="live", status="succeeded", created_at=100.0))
        await store.add_job(replace(BLANK, id="free", status="succeeded", created_at=101.0))
        right = JobService(store, kling, owner="right-clock")
        ahead = JobService(store, kling, owner="ahead-clock", clock=lambda: time.time() + 3600)  # an hour fast
        [(held, _)] = await right.claim_deliveries(1)
        assert held.id == "live"
        [(taken, _)] = await ahead.claim_deliveries(5)  # the live lease stays its holder's, in the database's terms
        assert taken.id == "free" and taken.lease_until is not None and taken.lease_until < time.time() + 120
        assert await ahead.renew(taken)
        renewed = await store.get_job("free")
        assert renewed is not None and renewed.lease_until is not None and renewed.lease_until < time.time() + 120
        await ahead.release_claims([taken])  # given back: free at once for a process with the right time
        assert [job.id for job, _ in await right.claim_deliveries(5)] == ["free"]
    finally:
        await store.close()
