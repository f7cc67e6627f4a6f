"""Queue instead of reject: the bot's own limit, the provider's limits, fairness, cancel, breaker, pause."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.core.credits import CreditService, QuotaRefused
from bot.core.jobs import InvalidRequest, JobRequest, JobService, ServiceUnavailable
from bot.core.model import QuotaSettings
from bot.provider.kling import CircuitBreaker, KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock

GUILD = 1
ROOMY = QuotaSettings(default_limit=1_000_000, period="total", member_in_flight=50, server_in_flight=50)


@pytest.fixture
def credits(store: Store, clock: FakeClock) -> CreditService:
    return CreditService(store, ROOMY, clock=clock)


@pytest.fixture
def narrow(store: Store, kling: KlingClient, clock: FakeClock, credits: CreditService) -> JobService:
    return JobService(store, kling, credits=credits, clock=clock, provider_concurrency=2)


def video(user: int, prompt: str = "clip") -> JobRequest:
    return JobRequest("text", prompt, guild_id=GUILD, user_id=user, channel_id=5)


def posts(sim: KlingSimulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST")


async def test_beyond_the_bots_limit_jobs_queue_and_go_fairly_as_slots_free(
    sim: KlingSimulator, narrow: JobService, credits: CreditService
) -> None:
    sim.hold = True
    made = [await narrow.create(video(1, f"a{n}")) for n in range(4)]
    made += [await narrow.create(video(2, "b0")), await narrow.create(video(3, "c0"))]
    assert [j.status for j in made] == ["submitted", "submitted", "queued", "queued", "queued", "queued"]
    assert posts(sim) == 2
    assert [j.prompt for j in await narrow.queue_order()] == ["a2", "b0", "c0", "a3"]
    assert (await credits.status(GUILD, 1, ())).reserved == 4 * 4_000  # queued jobs keep their credits
    sim.finish()
    await narrow.poll_once()  # the two finish: two slots free
    order = [r.json["prompt"] for r in sim.requests if r.method == "POST"]
    assert order == ["a0", "a1", "a2", "b0"]


async def test_the_providers_concurrency_limit_queues_instead_of_failing(
    sim: KlingSimulator, service: JobService, store: Store
) -> None:
    sim.fail_next("concurrency", on="submit", times=10)
    job = await service.create(JobRequest("text", "busy provider"))
    assert job.status == "queued" and job.error is None
    sim.hold = True
    await service.poll_once()
    assert (await store.get_job(job.id)).status == "queued"  # type: ignore[union-attr]
    sim.clear_faults()
    await service.poll_once()
    assert (await store.get_job(job.id)).status in ("submitted", "processing")  # type: ignore[union-attr]


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


async def test_a_refused_account_pauses_submissions_and_alerts_once(
    sim: KlingSimulator, service: JobService, clock: FakeClock
) -> None:
    sim.fail_next("credits", on="submit")
    job = await service.create(JobRequest("text", "no credits left"))
    assert job.status == "queued"
    with pytest.raises(ServiceUnavailable, match="operator"):
        await service.create(JobRequest("text", "another"))
    await service.poll_once()
    assert posts(sim) == 1
    [alert] = service.take_alerts()
    assert "out of credits" in alert and service.take_alerts() == []
    sim.fail_next("credits", on="submit")
    clock.advance(301)
    await service.poll_once()  # the pause is over: the queued job is the probe, and is refused again
    assert posts(sim) == 2 and service.take_alerts() == []  # still the same trouble: no second alert
    clock.advance(301)
    await service.poll_once()  # the operator topped up: the probe goes through
    assert posts(sim) == 3 and job.id in {t.external_id for t in sim.tasks.values()}


async def test_a_new_job_does_not_jump_the_queue(sim: KlingSimulator, narrow: JobService) -> None:
    sim.fail_next("concurrency", on="submit", times=4)  # the first try and the client's three retries
    first = await narrow.create(video(1, "first"))
    assert first.status == "queued"  # the provider was full
    second = await narrow.create(video(2, "second"))
    assert second.status == "queued"  # a slot looks free, but the first is waiting
    await narrow.poll_once()
    assert [r.json["prompt"] for r in sim.requests if r.method == "POST"] == ["first"] * 5 + ["second"]


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
