"""The pure scheduling rules: fair queue order, which jobs a poll asks about, the loop's sleep, the account pause."""

from __future__ import annotations

import asyncio

from bot.app import Lane, Pace
from bot.core.model import InFlight, Job
from bot.core.scheduling import (
    LATE_POLL_MAX_SECONDS,
    SAFETY_POLL_SECONDS,
    AccountPause,
    due_for_poll,
    fair_order,
    poll_delay,
)
from tests.conftest import FakeClock

T0 = 1_000_000.0


def job(job_id: str, user: int = 1, *, submitted: float = T0, duration: int = 5) -> Job:
    return Job(
        id=job_id, guild_id=1, channel_id=2, user_id=user, kind="text", prompt="p", duration=duration,
        resolution="720p", aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None,
        status="submitted", provider_task_id=job_id, provider_status=None, error=None, video_url=None,
        video_seconds=None, billed_amount=None, cost_estimate=4000, cost_billed=None, attachment_size_limit=None,
        message_id=None, thread_id=None, status_message_id=None, result_message_id=None, attempts=1,
        delivery_attempts=0, created_at=submitted, submitted_at=submitted, finished_at=None, delivered_at=None,
        updated_at=submitted,
    )  # fmt: skip


def test_the_queue_goes_round_robin_across_members_oldest_first_within_each() -> None:
    queued = [job("a1", 1), job("a2", 1), job("a3", 1), job("b1", 2), job("c1", 3), job("b2", 2)]
    assert [j.id for j in fair_order(queued)] == ["a1", "b1", "c1", "a2", "b2", "a3"]


def polled(job_id: str, *, asked_ago: float | None = None) -> InFlight:
    """A job at the provider as a tick reads it, submitted at T0; `asked_ago`: when the fleet last asked."""
    return InFlight(job_id, "submitted", job_id, 5, "720p", T0, T0, None, 1, asked_ago)


def test_a_job_is_not_asked_about_before_it_can_be_ready_but_for_the_safety_check() -> None:
    typical = {(5, "720p"): 40.0}
    fresh = polled("fresh")
    rules = {"job_timeout": 1800, "interval": 10.0}
    assert due_for_poll([fresh], now=T0 + 20, typical=typical, **rules) == []
    assert due_for_poll([fresh], now=T0 + 37, typical=typical, **rules) == [fresh]
    asked_long_ago = polled("fresh", asked_ago=SAFETY_POLL_SECONDS)
    assert due_for_poll([asked_long_ago], now=T0 + 61, typical={(5, "720p"): 600.0}, **rules)
    assert due_for_poll([fresh], now=T0 + 1, typical={}, **rules) == [fresh]  # no history


def test_a_job_ready_any_moment_is_asked_once_per_interval_by_the_fleet() -> None:
    rules = {"now": T0 + 100, "job_timeout": 1800, "interval": 10.0}
    assert due_for_poll([polled("never")], typical={}, **rules)  # never asked: at once
    assert not due_for_poll([polled("just", asked_ago=2.0)], typical={}, **rules)  # by this process or another
    assert due_for_poll([polled("a tick ago", asked_ago=9.5)], typical={}, **rules)  # one process's last tick
    near = {(5, "720p"): 95.0}  # around the expected finish: a quarter of the interval, as the loop's sleep
    assert not due_for_poll([polled("near", asked_ago=1.5)], typical=near, **rules)
    assert due_for_poll([polled("near", asked_ago=2.5)], typical=near, **rules)
    assert due_for_poll([polled("every tick", asked_ago=0.0)], typical={}, **{**rules, "interval": 0.0})


def test_a_late_job_is_asked_less_often_the_later_it_is() -> None:
    rules = {"typical": {}, "job_timeout": 1800, "interval": 10.0}
    soon = T0 + 1800 + 10  # ten seconds late: once a minute
    assert not due_for_poll([polled("late", asked_ago=30)], now=soon, **rules)
    assert due_for_poll([polled("late", asked_ago=61)], now=soon, **rules)
    hours = T0 + 1800 + 3 * 3600  # hours late: every five minutes
    assert not due_for_poll([polled("late", asked_ago=200)], now=hours, **rules)
    assert due_for_poll([polled("late", asked_ago=LATE_POLL_MAX_SECONDS)], now=hours, **rules)


def test_the_loop_sleeps_less_around_an_expected_finish_and_never_more_than_its_base() -> None:
    typical = {(5, "720p"): 40.0}
    one = job("one")
    assert poll_delay([], now=T0, typical=typical, base=10) == 10
    assert poll_delay([one], now=T0 + 30, typical=typical, base=10) == 6  # wakes at 0.9 x 40 s
    assert poll_delay([one], now=T0 + 40, typical=typical, base=10) == 2.5  # around the finish: base / 4
    assert poll_delay([one], now=T0 + 100, typical=typical, base=10) == 10  # past it: the base again


def test_the_account_pause_alerts_once_per_trouble_and_lets_one_probe_through() -> None:
    clock = FakeClock()
    pause = AccountPause(300, clock)
    assert pause.pause("out of credits") and not pause.pause("still out of credits")
    assert pause.take_alerts() == ["out of credits"] and pause.take_alerts() == []
    assert pause.holding()
    clock.advance(301)
    assert not pause.holding() and not pause.active  # time for the probe
    pause.worked()
    assert pause.pause("out again")  # a new trouble after a submit worked: a new alert


async def test_the_global_pace_lets_no_more_than_the_limit_into_any_second() -> None:
    clock = FakeClock(0.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    pace = Pace(3, clock=clock, sleep=sleep)
    sent_at = []
    for _ in range(7):
        await pace.wait()
        sent_at.append(clock())
        pace.done()  # answered at once: the turn ends a second after it was let through
        clock.advance(0.1)
    assert all(sum(1 for t in sent_at if start <= t < start + 1.0) <= 3 for start in sent_at)
    assert slept and sent_at[3] >= sent_at[0] + 1.0  # the fourth waited for the first to leave the window


async def test_a_turn_of_the_global_pace_lasts_until_a_second_after_its_answer() -> None:
    # Discord counts a request when it arrives, at any moment before its answer: a slow one still holds its turn.
    clock = FakeClock(0.0)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    pace = Pace(2, clock=clock, sleep=sleep)
    await pace.wait()
    await pace.wait()
    clock.advance(1.5)  # both still in flight: no turn has freed, however long ago they were let through
    pace.done()
    answered = clock()
    clock.advance(0.2)
    pace.done()
    await pace.wait()
    assert clock() >= answered + 1.0  # the third went a second after the first answer, not after the first start


async def turns_taken(requests: list[tuple[str, Lane]]) -> list[str]:
    """The order in which the pace lets these requests through, each joining its lane in the order given, while
    the second is full."""
    clock = FakeClock(0.0)

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)  # the test moves the clock; a sleeper looks again at each turn of the loop

    pace = Pace(2, clock=clock, sleep=sleep)
    for _ in range(2):
        await pace.wait(Lane.BACKGROUND)
        pace.done()  # this second is full
    order: list[str] = []

    async def request(name: str, lane: Lane) -> None:
        await pace.wait(lane)
        order.append(name)
        pace.done()

    tasks = []
    for name, lane in requests:
        tasks.append(asyncio.create_task(request(name, lane)))
        await asyncio.sleep(0)  # in line before the next one comes
    everything = asyncio.gather(*tasks)
    while not everything.done():
        clock.advance(0.25)
        await asyncio.sleep(0)
    return order


async def test_a_request_a_member_waits_on_goes_before_the_background_ones_waiting() -> None:
    background = [(f"background {n}", Lane.BACKGROUND) for n in range(4)]
    order = await turns_taken([*background, ("member", Lane.MEMBER)])
    assert order[0] == "member"
    assert order[1:] == [f"background {n}" for n in range(4)]  # each lane keeps its order


async def test_a_finished_videos_post_goes_after_the_members_and_before_the_background_work_waiting() -> None:
    background = [(f"card edit {n}", Lane.BACKGROUND) for n in range(3)]
    videos = [(f"video {n}", Lane.VIDEO) for n in range(3)]
    order = await turns_taken([*background, *videos, ("member", Lane.MEMBER)])
    assert order == ["member", "video 0", "video 1", "video 2", "card edit 0", "card edit 1", "card edit 2"]
