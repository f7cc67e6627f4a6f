"""Intake and reservation over the simulator and a real SQLite file: what is checked, written and sent when a job
is taken, the breaker that refuses new jobs at once, and cancelling a job not yet at the provider."""

from __future__ import annotations

import pytest

from bot.core.credits import CreditService
from bot.core.jobs import InvalidRequest, JobRequest, JobService, ServiceUnavailable, SubmitRefused
from bot.media.images import prepare_first_frame
from bot.provider.kling import CircuitBreaker
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock
from tests.core.conftest import GUILD, posts, video


async def jobs_count(store: Store) -> int:
    return len(await store.jobs_in(("reserved", "submitted", "processing", "succeeded", "failed", "delivered")))


async def test_create_submits_with_our_id_as_external_task_id(sim: KlingSimulator, service: JobService) -> None:
    job = await service.create(JobRequest("text", "a red fox in snow", duration=5, resolution="1080p", user_id=7))
    assert job.status == "submitted"
    assert job.provider_task_id in sim.tasks
    [post] = [r for r in sim.requests if r.method == "POST"]
    assert post.json["options"]["external_task_id"] == job.id
    assert post.json["settings"] == {"resolution": "1080p", "aspect_ratio": "16:9", "duration": 5}
    assert job.cost_estimate == 5000


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (JobRequest("text", "   "), "prompt is empty"),
        (JobRequest("text", "x" * 3073), "at most 3072"),
        (JobRequest("image", "x" * 2501, image_url="https://e/x.png"), "at most 2500"),
        (JobRequest("text", "ok", duration=2), "from 3 to 15"),
        (JobRequest("text", "ok", duration=16), "from 3 to 15"),
        (JobRequest("text", "ok", resolution="4k"), "720p or 1080p"),
        (JobRequest("text", "ok", aspect_ratio="4:3"), "16:9, 9:16 or 1:1"),
        (JobRequest("image", "ok", aspect_ratio="16:9", image_url="https://e/x.png"), "leave the aspect ratio out"),
        (JobRequest("image", "ok"), "exactly one first-frame"),
        (JobRequest("image", "ok", image_url="file:///etc/passwd"), "http(s) link"),
    ],
)
async def test_invalid_requests_write_nothing_and_send_nothing(
    sim: KlingSimulator, service: JobService, store: Store, request_: JobRequest, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        await service.create(request_)
    assert sim.requests == []
    assert await jobs_count(store) == 0


async def test_a_refused_submit_is_recorded_as_failed_with_the_reason(sim: KlingSimulator, service: JobService) -> None:
    with pytest.raises(SubmitRefused) as refused:
        await service.create(JobRequest("text", "a forbidden scene"))
    job = refused.value.job
    assert job.status == "failed"
    assert job.error is not None and "content policy" in job.error
    assert job.provider_task_id is None


async def test_an_image_job_sends_the_stored_frame_as_base64(
    sim: KlingSimulator, service: JobService, store: Store, png_frame: bytes
) -> None:
    frame = prepare_first_frame(png_frame)
    job = await service.create(JobRequest("image", "", image=frame, image_source="frame.png"))
    [post] = [r for r in sim.requests if r.method == "POST"]
    assert post.json["contents"] == [{"type": "first_frame", "url": frame.base64}]
    assert "aspect_ratio" not in post.json["settings"]
    assert job.image_sha256 is not None and (await store.get_image(job.image_sha256)) is not None


async def test_the_circuit_breaker_refuses_new_jobs_at_once_and_probes_once(
    sim: KlingSimulator, service: JobService, store: Store
) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=30, clock=lambda: now[0])
    now = [0.0]
    service.kling.breaker = breaker
    sim.fail_next("server_error", times=3)
    assert (await service.create(JobRequest("text", "first"))).status == "reserved"
    assert breaker.is_open
    before = len(sim.requests)
    with pytest.raises(ServiceUnavailable, match="not answering"):
        await service.create(JobRequest("text", "second"))
    assert len(sim.requests) == before and len(await store.jobs_in(("reserved", "failed"))) == 1
    now[0] = 31.0  # after the cooldown the next call is the one probe; it succeeds and closes the circuit
    assert (await service.create(JobRequest("text", "third"))).status == "submitted"
    assert not breaker.is_open


async def test_cancel_releases_a_queued_job_and_refuses_a_sent_one(
    sim: KlingSimulator, narrow: JobService, credits: CreditService
) -> None:
    sim.hold = True
    sent = await narrow.create(video(1))
    await narrow.create(video(1))
    waiting = await narrow.create(video(1))
    with pytest.raises(InvalidRequest, match="only its requester or a moderator"):
        await narrow.cancel(waiting.id, guild_id=GUILD, user_id=2)
    with pytest.raises(InvalidRequest, match="no such job"):
        await narrow.cancel(waiting.id, guild_id=GUILD + 1, user_id=2, moderator=True)  # another server's moderator
    cancelled = await narrow.cancel(waiting.id, guild_id=GUILD, user_id=2, moderator=True)
    assert cancelled.status == "cancelled"
    assert (await credits.status(GUILD, 1, ())).reserved == 2 * 4_000
    with pytest.raises(InvalidRequest, match="cannot be stopped"):
        await narrow.cancel(sent.id, guild_id=GUILD, user_id=1)


async def test_cancelling_a_job_whose_submit_is_uncertain_never_resends_it(
    sim: KlingSimulator, narrow: JobService, clock: FakeClock, credits: CreditService
) -> None:
    sim.fail_next("server_error", on="submit")
    job = await narrow.create(video(1, "lost answer"))
    assert job.status == "reserved" and job.uncertain_since is not None
    asked = await narrow.cancel(job.id, guild_id=GUILD, user_id=1)
    assert asked.status == "reserved" and asked.cancel_requested  # held until the provider's answer is known
    for _ in range(4):
        clock.advance(60)
        await narrow.poll_once()
    final = await narrow.store.get_job(job.id)
    assert final is not None and final.status == "cancelled" and posts(sim) == 1
    assert (await credits.status(GUILD, 1, ())).reserved == 0


async def test_a_cancelled_uncertain_job_the_provider_did_make_is_still_delivered_and_charged(
    sim: KlingSimulator, narrow: JobService, clock: FakeClock
) -> None:
    sim.fail_next("accept_then_error", on="submit")  # the task exists; the answer is lost
    sim.fail_next("server_error", on="query", times=4)  # and the first look-up cannot tell
    job = await narrow.create(video(1, "made anyway"))
    await narrow.cancel(job.id, guild_id=GUILD, user_id=1)
    clock.advance(60)
    await narrow.poll_once()
    final = await narrow.store.get_job(job.id)
    assert final is not None and final.status in ("submitted", "processing", "succeeded") and posts(sim) == 1
