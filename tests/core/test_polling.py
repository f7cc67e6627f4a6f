"""Polling and settling over the simulator and a real SQLite file: batched polls, late jobs, lost and crashed
submits settled by their external id, and time-outs. (The tick's reads: test_poll_tick.py; adaptive polling:
test_adaptive.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bot.core.credits import CreditService, QuotaRefused
from bot.core.jobs import SUBMIT_LOOKUP_SECONDS, JobRequest, JobService
from bot.core.model import QuotaSettings
from bot.core.scheduling import LATE_POLL_MAX_SECONDS
from bot.provider.kling import KlingClient
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import API_KEY, FakeClock
from tests.core.conftest import GUILD, posts, video


def submits(sim: KlingSimulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST")


def task_queries(sim: KlingSimulator) -> list:
    return [r for r in sim.requests if r.path.endswith("/kling/tasks")]


async def test_poll_moves_45_jobs_to_succeeded_in_3_requests(
    sim: KlingSimulator, service: JobService, store: Store
) -> None:
    sim.hold = True
    created = [await service.create(JobRequest("text", f"clip {n}", duration=5)) for n in range(45)]
    sim.finish()
    changes = await service.poll_once()
    assert len(task_queries(sim)) == 3
    assert sorted(c.job.id for c in changes) == sorted(j.id for j in created)
    job = await store.get_job(created[0].id)
    assert job is not None and job.status == "succeeded"
    assert job.video_url is not None and job.video_url.startswith(sim.base_url().split("/v1")[0])
    assert job.billed_amount == "4" and job.cost_billed == 4000
    assert job.video_seconds == pytest.approx(5.041)


async def test_processing_then_failed_is_followed(sim: KlingSimulator, service: JobService) -> None:
    sim.hold = True
    job = await service.create(JobRequest("text", "please fail-render this"))
    [change] = await service.poll_once()
    assert (change.previous, change.job.status) == ("submitted", "processing")
    sim.finish(job.provider_task_id, fail_message="render error")
    [change] = await service.poll_once()
    assert change.job.status == "failed" and "render error" in (change.job.error or "")


async def test_a_late_job_keeps_its_credits_is_asked_less_often_and_given_up_after_a_day(
    sim: KlingSimulator, service: JobService, clock: FakeClock
) -> None:
    sim.hold = True
    job = await service.create(JobRequest("text", "slow"))
    clock.advance(30 * 60 + 1)
    assert all(c.job.status != "failed" for c in await service.poll_once())  # past JOB_TIMEOUT_MINUTES: late
    late = await service.store.get_job(job.id)
    assert late is not None and late.status in ("submitted", "processing") and service.is_late(late)
    asked = len([r for r in sim.requests if r.method == "GET"])
    clock.advance(10)
    await service.poll_once()
    assert len([r for r in sim.requests if r.method == "GET"]) == asked  # backed off: not asked every tick
    clock.advance(24 * 3600)
    [change] = await service.poll_once()
    assert change.job.id == job.id and change.job.status == "failed"
    assert "did not arrive within 24.5 hours" in (change.job.error or "")


async def test_a_late_video_that_arrives_is_delivered_not_failed(
    sim: KlingSimulator, service: JobService, clock: FakeClock
) -> None:
    sim.hold = True
    job = await service.create(JobRequest("text", "very slow"))
    clock.advance(3 * 3600)
    await service.poll_once()
    sim.hold = False
    sim.finish(job.provider_task_id)
    clock.advance(LATE_POLL_MAX_SECONDS)
    [change] = await service.poll_once()
    assert change.job.status == "succeeded" and change.job.cost_billed == 4_000


async def test_resume_adopts_a_job_sent_before_a_crash_without_a_second_submit(
    sim: KlingSimulator, service: JobService, kling: KlingClient, store: Store
) -> None:
    # The crash: the row is written and the submit reached the provider, but the answer was never recorded.
    sim.fail_next("accept_then_error", on="submit")
    sim.fail_next("server_error", on="query", times=4)  # the lookup and its three retries, all during create()
    job = await service.create(JobRequest("text", "crash here"))
    assert job.status == "reserved"
    assert submits(sim) == 1
    [change] = await service.resume()
    assert change.job.status in ("submitted", "succeeded")
    assert change.job.provider_task_id in sim.tasks
    assert submits(sim) == 1


async def test_a_lost_submit_is_sent_again_only_after_lookups_over_the_window(
    sim: KlingSimulator, service: JobService, clock: FakeClock
) -> None:
    sim.fail_next("server_error", on="submit")
    job = await service.create(JobRequest("text", "never sent"))
    assert job.status == "reserved" and job.uncertain_since is not None and sim.tasks == {}
    for _ in range(5):  # every tick looks it up, none sends it again before the window is over
        clock.advance(SUBMIT_LOOKUP_SECONDS / 6)
        assert await service.poll_once() == []
    assert submits(sim) == 1
    lookups = [r for r in sim.requests if r.query.get("external_task_ids") == job.id]
    assert len(lookups) >= 5
    clock.advance(SUBMIT_LOOKUP_SECONDS / 6 + 1)
    changes = await service.poll_once()
    assert (changes[0].previous, changes[0].job.status) == ("reserved", "submitted")
    assert submits(sim) == 2 and len(sim.tasks) == 1


async def test_resume_sends_a_job_reserved_but_never_sent(
    sim: KlingSimulator, service: JobService, kling: KlingClient, clock: FakeClock, tmp_path: Path
) -> None:
    job = await service.reserve(JobRequest("text", "crashed before the send"))
    # The restart: the bot opens its file alone again (the claims of the process before are void), a new process.
    reopened = await Store.open(tmp_path / "bot.sqlite3", single_instance=True)
    try:
        [change] = await JobService(reopened, kling, clock=clock).resume()
    finally:
        await reopened.close()
    assert change.job.id == job.id and change.job.status == "submitted" and submits(sim) == 1


async def test_a_task_created_40_s_late_by_a_gateway_that_keeps_duplicates_is_found_not_sent_again(
    store: Store, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    sim = KlingSimulator(
        api_key=API_KEY,
        endpoint_path="acct-endpoint",
        render_seconds=30.0,
        clock=clock,
        variant=GatewayVariant(late_submit=40, dedupe_external_ids=False),
    )
    await sim.start()
    try:
        client = KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY))
        service = JobService(store, client, clock=clock)
        job = await service.create(JobRequest("text", "answered late"))
        assert job.status == "reserved" and submits(sim) == 1  # a gateway time-out; no task visible yet
        for _ in range(3):  # 15 s apart: absent each time, and never sent again
            clock.advance(15)
            await service.poll_once()
        moved = await service.get(job.id)
        assert moved is not None and moved.status in ("submitted", "processing")  # found at 45 s
        assert submits(sim) == 1 and len(sim.tasks_for(job.id)) == 1  # one task, so one bill
        clock.advance(SUBMIT_LOOKUP_SECONDS)
        await service.poll_once()
        assert submits(sim) == 1 and len(sim.tasks_for(job.id)) == 1
    finally:
        await sim.close()


async def test_jobs_never_sent_while_the_service_is_down_time_out_and_free_the_members_slots(
    sim: KlingSimulator, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    credits = CreditService(
        store, QuotaSettings(1_000_000, "total", member_in_flight=2, server_in_flight=50), clock=clock
    )
    service = JobService(store, kling, credits=credits, clock=clock, job_timeout=30 * 60)
    kling.breaker.opened_at = kling.breaker.clock()  # down: members who choose to wait get queued jobs
    waiting = [await service.create(replace(video(1, f"w{n}"), wait_if_unavailable=True)) for n in range(2)]
    assert [j.status for j in waiting] == ["queued", "queued"]
    with pytest.raises(QuotaRefused):
        await service.create(replace(video(1), wait_if_unavailable=True))  # both slots held
    clock.advance(30 * 60 + 1)
    assert await service.poll_once(sweep=False) == []  # another process of the fleet does the sweep
    changes = await service.poll_once()
    assert sorted((c.previous, c.job.status) for c in changes) == [("queued", "failed")] * 2
    assert all("never sent" in (c.job.error or "") and "nothing was charged" in (c.job.error or "") for c in changes)
    status = await credits.status(GUILD, 1, ())
    assert (status.reserved, status.in_flight) == (0, 0)
    assert posts(sim) == 0
