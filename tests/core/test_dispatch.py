"""Dispatch over the simulator and a real SQLite file: queue instead of reject (the bot's own limit, the provider's
limits), fairness, the account pause and its one alert, and refusals that never open the circuit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.core.credits import CreditService
from bot.core.jobs import JobRequest, JobService, ServiceUnavailable, SubmitRefused
from bot.provider.kling import CircuitBreaker
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock
from tests.core.conftest import GUILD, posts, video


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


async def test_the_dispatcher_stops_sending_once_the_provider_says_the_account_is_full(
    sim: KlingSimulator, service: JobService, clock: FakeClock
) -> None:
    service.kling.breaker.opened_at = service.kling.breaker.clock()  # down: the jobs wait in the queue
    waiting = [await service.create(replace(JobRequest("text", f"w{n}"), wait_if_unavailable=True)) for n in range(3)]
    assert [j.status for j in waiting] == ["queued"] * 3
    service.kling.breaker.opened_at = None
    sim.fail_next("credits", on="submit")  # the first one sent hears that the account is out of credits
    await service.poll_once()
    assert posts(sim) == 1  # the other two were not sent after that answer
    assert [(await service.get(j.id)).status for j in waiting] == ["queued"] * 3  # type: ignore[union-attr]


async def test_content_policy_refusals_never_open_the_circuit(sim: KlingSimulator, service: JobService) -> None:
    service.kling.breaker = CircuitBreaker(threshold=3)
    for n in range(5):
        with pytest.raises(SubmitRefused):
            await service.create(JobRequest("text", f"forbidden {n}"))
    assert not service.kling.breaker.is_open  # a refusal is an answer, not a failing provider
    assert (await service.create(JobRequest("text", "fine"))).status == "submitted"
