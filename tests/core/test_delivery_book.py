"""Delivery bookkeeping over a real SQLite file: the claims deliverers take, what they record under them, and the
moderator review that holds a finished video first."""

from __future__ import annotations

from dataclasses import replace

from bot.core.jobs import LEASE_SECONDS, JobService
from bot.provider.kling import KlingClient
from bot.storage.sqlite import Store
from tests.conftest import FakeClock
from tests.storage.test_store import BLANK

FINISHED = replace(BLANK, status="succeeded", video_url="http://example.com/v.mp4", created_at=0.0, updated_at=0.0)


async def test_a_finished_job_is_claimed_by_one_deliverer_and_flagged_once_a_try_failed(
    service: JobService, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    await store.add_job(FINISHED)
    other = JobService(store, kling, clock=clock, owner="another-process")
    assert await service.claim_deliveries(0) == []
    [(job, maybe_posted)] = await service.claim_deliveries(5)
    assert job.id == FINISHED.id and not maybe_posted  # a first try: no post can exist yet
    assert await other.claim_deliveries(5) == []  # held by this process
    assert await service.note_delivery_problem(job, "Discord refused the post") == 1
    await service.release_claims([job])
    [(again, maybe_posted)] = await other.claim_deliveries(5)
    assert again.delivery_attempts == 1 and maybe_posted  # the failed try may have reached Discord


async def test_a_deliverer_that_stopped_leaves_its_job_to_the_next_one_flagged_as_perhaps_posted(
    service: JobService, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    await store.add_job(FINISHED)
    [(held, _)] = await service.claim_deliveries(1)
    clock.advance(LEASE_SECONDS + 1)  # this process stopped: its claim ran out unrenewed
    other = JobService(store, kling, clock=clock, owner="another-process")
    [(taken, maybe_posted)] = await other.claim_deliveries(1)
    assert taken.id == held.id and maybe_posted
    assert not await service.renew(held)  # the old claim is gone for good
    assert not await service.mark_delivered(held.id, result_message_id=9, lease=service.lease_of(held))
    assert await other.mark_delivered(taken.id, result_message_id=10, lease=other.lease_of(taken))
    assert not await other.mark_delivered(taken.id, result_message_id=11, lease=other.lease_of(taken))  # once
    delivered = await store.get_job(taken.id)
    assert delivered is not None and delivered.status == "delivered" and delivered.result_message_id == 10
    assert delivered.lease_owner is None  # the claim ends with the write that finishes the work


async def test_an_undeliverable_video_keeps_its_link_and_a_dead_download_fails_the_job(
    service: JobService, store: Store
) -> None:
    await store.add_job(FINISHED)
    await store.add_job(replace(FINISHED, id="j2"))
    [(first, _), (second, _)] = await service.claim_deliveries(2)
    assert await service.mark_undeliverable(first.id, "every post refused", lease=service.lease_of(first))
    kept = await store.get_job(first.id)
    assert kept is not None and kept.status == "undeliverable" and kept.video_url == FINISHED.video_url
    failed = await service.fail_download(second, "HTTP 404")
    assert failed is not None and failed.status == "failed" and "could not be fetched: HTTP 404" in (failed.error or "")
    assert await service.fail_download(second, "HTTP 404") is None  # already moved


async def test_a_review_is_held_before_delivery_and_decided_once(service: JobService, store: Store) -> None:
    await store.add_job(replace(FINISHED, delivery_attempts=2))
    await store.add_job(replace(FINISHED, id="j2"))
    held = await service.hold_for_review(FINISHED)
    assert held.review_state == "pending"
    await service.set_review_message(held.id, 77)  # posted to the review channel: now it waits for a moderator
    assert [job.id for job, _ in await service.claim_deliveries(5)] == ["j2"]  # the held one is not posted
    assert await service.approve(held.id)
    assert not await service.approve(held.id) and await service.reject(held.id, "too late") is None
    approved = await store.get_job(held.id)
    assert approved is not None and approved.review_state == "approved" and approved.review_message_id == 77
    assert approved.delivery_attempts == 0  # refused posts to the review channel do not count against it
    await service.hold_for_review(replace(FINISHED, id="j2"))
    rejected = await service.reject("j2", "not for this server")
    assert rejected is not None and rejected.status == "rejected" and rejected.review_reason == "not for this server"
