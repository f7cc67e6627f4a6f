"""Adaptive polling: no question before a job can be ready, a rare safety check, faster ticks near the finish."""

from __future__ import annotations

from dataclasses import replace

from bot.core.jobs import JobRequest, JobService
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
