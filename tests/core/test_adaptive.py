"""Adaptive polling: no question before a job can be ready, a rare safety check, faster ticks near the finish."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bot.core.jobs import JobRequest, JobService
from bot.core.model import InFlight, Job
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock
from tests.storage.test_store import BLANK


def queries(sim: KlingSimulator) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/kling/tasks"))


async def with_history(store: Store, clock: FakeClock, render: float = 40.0) -> None:
    for n in range(5):
        done = clock.now - 1000 + n
        await store.add_job(replace(BLANK, id=f"old{n}", status="delivered", submitted_at=done - render,
                                    finished_at=done, created_at=done - render, updated_at=done))  # fmt: skip


async def test_without_history_every_tick_asks(sim: KlingSimulator, service: JobService) -> None:
    sim.hold = True
    await service.create(JobRequest("text", "new shape"))
    await service.poll_once()
    await service.poll_once()
    assert queries(sim) == 2


async def test_a_job_is_not_asked_about_before_it_can_be_ready(
    sim: KlingSimulator, service: JobService, store: Store, clock: FakeClock
) -> None:
    await with_history(store, clock)  # this shape takes 40 s
    sim.hold = True
    await service.create(JobRequest("text", "patience", duration=5, resolution="720p"))
    for _ in range(3):
        clock.advance(10)  # 10, 20, 30 s: before 0.9 x 40 s
        await service.poll_once()
    assert queries(sim) == 0
    clock.advance(6)  # 36 s
    await service.poll_once()
    assert queries(sim) == 1


async def test_a_long_early_wait_still_gets_a_safety_check(
    sim: KlingSimulator, service: JobService, store: Store, clock: FakeClock
) -> None:
    await with_history(store, clock, render=600)
    sim.hold = True
    await service.create(JobRequest("text", "slow shape"))
    for _ in range(13):
        clock.advance(10)
        await service.poll_once()
    assert queries(sim) == 2  # at 60 s and at 120 s since the submit


async def test_the_loop_ticks_faster_around_the_expected_finish(
    sim: KlingSimulator, service: JobService, store: Store, clock: FakeClock
) -> None:
    await with_history(store, clock)
    sim.hold = True
    assert await service.suggested_delay(10) == 10  # nothing in flight
    await service.create(JobRequest("text", "soon"))
    clock.advance(25)
    assert await service.suggested_delay(10) == 10  # sleep until 0.9 x 40 s = 36 s: a whole interval
    clock.advance(5)
    assert await service.suggested_delay(10) == 6  # 30 s: wake at 36 s, no later
    clock.advance(6)
    assert await service.suggested_delay(10) == 2.5  # around the finish: a quarter of the interval
    clock.advance(20)
    assert await service.suggested_delay(10) == 10  # well past it: back to normal
    service.adaptive = False
    clock.advance(-20)
    assert await service.suggested_delay(10) == 10


def asked_ids(sim: KlingSimulator) -> Counter[str]:
    """How many times the simulator was asked about each task."""
    return Counter(i for r in sim.requests if r.path.endswith("/kling/tasks") for i in r.query["task_ids"].split(","))


def another_process(service: JobService, clock: FakeClock, **options: object) -> JobService:
    """A second service on the same database, as another process of a fleet would be (its own claims' owner)."""
    return JobService(service.store, service.kling, clock=clock, owner="another-process", **options)  # type: ignore[arg-type]


async def two_processes_with_jobs(
    sim: KlingSimulator, store: Store, kling: KlingClient, clock: FakeClock
) -> tuple[JobService, JobService, list[Job]]:
    """Two services on one database polling once per 10 s, and five jobs held at the provider."""
    first = JobService(store, kling, clock=clock, provider_concurrency=100, poll_interval=10.0)
    second = another_process(first, clock, poll_interval=10.0)
    sim.hold = True
    return first, second, [await first.create(JobRequest("text", f"clip {n}")) for n in range(5)]


async def test_two_services_on_one_database_ask_about_each_job_once_per_interval(
    sim: KlingSimulator, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    first, second, jobs = await two_processes_with_jobs(sim, store, kling, clock)
    for _ in range(3):  # three intervals, each process ticking twice in each
        for service in (first, second, first, second):
            await service.poll_once()
            clock.advance(2)
        clock.advance(2)
    assert asked_ids(sim) == {job.provider_task_id: 3 for job in jobs}  # not once per process, nor per tick


async def test_a_service_that_read_before_another_asked_and_claims_after_does_not_ask_again(
    sim: KlingSimulator, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    first, second, jobs = await two_processes_with_jobs(sim, store, kling, clock)
    await the_other_polls_after_the_read(second, first)
    assert asked_ids(sim) == {job.provider_task_id: 1 for job in jobs}


async def the_other_polls_after_the_read(late: JobService, other: JobService) -> None:
    """`late` ticks, and `other` ticks whole between `late`'s read of the jobs in flight and its claim of them."""
    read = late.store.in_flight

    async def read_then_the_other_polls(*, origin: str, now: float) -> list[InFlight]:
        rows = await read(origin=origin, now=now)
        await other.poll_once()  # asks about every job and gives its claims back
        return rows

    late.store = ReadHook(late.store, read_then_the_other_polls)  # type: ignore[assignment]
    await late.poll_once()


class ReadHook:
    """A store whose `in_flight` is `read`, the rest its own (another service may share the store itself)."""

    def __init__(self, store: object, read: Callable[..., Awaitable[list[InFlight]]]) -> None:
        self._store = store
        self.in_flight = read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_without_adaptive_polling_every_tick_asks_whatever_the_interval(
    sim: KlingSimulator, store: Store, kling: KlingClient, clock: FakeClock
) -> None:
    service = JobService(store, kling, clock=clock, adaptive=False, poll_interval=10.0)
    sim.hold = True
    await service.create(JobRequest("text", "asked every tick"))
    for _ in range(3):
        await service.poll_once()
    assert queries(sim) == 3
