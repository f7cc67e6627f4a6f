"""Credits over real SQLite and the simulator: the race, precedence, refunds, settlement, periods, audit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from bot.core.credits import CreditService, QuotaRefused
from bot.core.jobs import InvalidRequest, JobRequest, JobService, SubmitRefused
from bot.core.model import QuotaSettings
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock

GUILD, OTHER_GUILD, ALICE, MOD = 100, 200, 1, 9
DEFAULTS = QuotaSettings(default_limit=20_000, period="week", member_in_flight=2, server_in_flight=10)


@pytest.fixture
def credits(store: Store, clock: FakeClock) -> CreditService:
    return CreditService(store, DEFAULTS, clock=clock)


@pytest.fixture
def paid_service(store: Store, kling: KlingClient, clock: FakeClock, credits: CreditService) -> JobService:
    return JobService(store, kling, credits=credits, clock=clock, provider_concurrency=100)


def video(
    duration: int = 5, resolution: str = "720p", user: int = ALICE, guild: int = GUILD, **kw: object
) -> JobRequest:
    return JobRequest("text", "a lighthouse at dusk", duration=duration, resolution=resolution, guild_id=guild,
                      user_id=user, channel_id=5, **kw)  # type: ignore[arg-type]  # fmt: skip


async def test_fifty_concurrent_commands_with_room_for_five_start_exactly_five(
    sim: KlingSimulator, paid_service: JobService, credits: CreditService, store: Store
) -> None:
    sim.hold = True
    await credits.set_caps(GUILD, MOD, member=100, server=100)
    await credits.set_default(GUILD, MOD, limit=20_000, period="week")  # 5 jobs of 4 credits
    results = await asyncio.gather(*(paid_service.create(video()) for _ in range(50)), return_exceptions=True)
    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, QuotaRefused)]
    assert len(started) == 5 and len(refused) == 45
    assert "you have 0 credits" in str(refused[0]) and "reset" in str(refused[0])
    assert len([r for r in sim.requests if r.method == "POST"]) == 5
    status = await credits.status(GUILD, ALICE, ())
    assert (status.reserved, status.used, status.remaining) == (20_000, 0, 0)


async def test_limit_precedence_block_override_role_default(credits: CreditService) -> None:
    status = await credits.status(GUILD, ALICE, (7, 8))
    assert (status.limit.source, status.limit.millicredits) == ("default", 20_000)
    await credits.set_role(GUILD, MOD, 7, 30_000)
    await credits.set_role(GUILD, MOD, 8, 60_000)
    status = await credits.status(GUILD, ALICE, (7, 8))
    assert (status.limit.source, status.limit.role_id, status.limit.millicredits) == ("role", 8, 60_000)
    await credits.set_role(GUILD, MOD, 7, None)  # unlimited
    assert (await credits.status(GUILD, ALICE, (7, 8))).remaining is None
    await credits.set_member_limit(GUILD, MOD, ALICE, 1_000)
    status = await credits.status(GUILD, ALICE, (7, 8))
    assert (status.limit.source, status.remaining) == ("override", 1_000)
    await credits.block(GUILD, MOD, ALICE, "spamming")
    status = await credits.status(GUILD, ALICE, (7, 8))
    assert (status.limit.source, status.limit.reason, status.remaining) == ("blocked", "spamming", 0)
    await credits.unblock(GUILD, MOD, ALICE)
    await credits.clear_member(GUILD, MOD, ALICE)
    assert (await credits.status(GUILD, ALICE, (7, 8))).remaining is None


async def test_a_blocked_member_is_refused_with_the_reason_and_nothing_is_written(
    sim: KlingSimulator, paid_service: JobService, credits: CreditService, store: Store
) -> None:
    await credits.block(GUILD, MOD, ALICE, "too many requests")
    with pytest.raises(QuotaRefused, match="too many requests"):
        await paid_service.create(video())
    assert sim.requests == [] and await store.member_jobs(GUILD, ALICE) == []


async def test_grants_add_to_the_limit_for_the_current_period_only(
    paid_service: JobService, credits: CreditService, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()  # a Wednesday
    await credits.grant(GUILD, MOD, ALICE, 8_000, "contest winner")
    assert (await credits.status(GUILD, ALICE, ())).remaining == 28_000
    clock.now = datetime(2026, 11, 30, 0, 0, 1, tzinfo=UTC).timestamp()  # next Monday: a new week
    status = await credits.status(GUILD, ALICE, ())
    assert status.remaining == 20_000
    assert status.window.reset_at == datetime(2026, 12, 7, tzinfo=UTC)


async def test_failed_and_timed_out_jobs_release_their_credits(
    sim: KlingSimulator, paid_service: JobService, credits: CreditService, clock: FakeClock
) -> None:
    sim.hold = True
    await paid_service.create(video())
    fails = await paid_service.create(video())
    assert (await credits.status(GUILD, ALICE, ())).reserved == 8_000
    sim.finish(fails.provider_task_id, fail_message="render error")
    await paid_service.poll_once()
    assert (await credits.status(GUILD, ALICE, ())).reserved == 4_000
    clock.advance(31 * 60)
    await paid_service.poll_once()
    assert (await credits.status(GUILD, ALICE, ())).reserved == 4_000  # late: still held
    clock.advance(24 * 3600)
    await paid_service.poll_once()
    status = await credits.status(GUILD, ALICE, ())
    assert (status.reserved, status.used, status.remaining) == (0, 0, 20_000)


async def test_a_refused_submit_charges_nothing(paid_service: JobService, credits: CreditService) -> None:
    with pytest.raises(SubmitRefused):
        await paid_service.create(JobRequest("text", "forbidden", guild_id=GUILD, user_id=ALICE, channel_id=5))
    assert (await credits.status(GUILD, ALICE, ())).remaining == 20_000


async def test_a_finished_job_is_settled_at_the_billed_amount(
    sim: KlingSimulator, paid_service: JobService, credits: CreditService
) -> None:
    await credits.set_caps(GUILD, MOD, member=5, server=10)
    await paid_service.create(video(duration=5, resolution="1080p"))  # estimate 5 credits, billed 5
    await paid_service.create(video(duration=3))  # estimate 2.4, billed 2.4
    await paid_service.poll_once()
    status = await credits.status(GUILD, ALICE, ())
    assert (status.used, status.reserved) == (7_400, 0)


async def test_in_flight_caps_per_member_and_per_server(
    sim: KlingSimulator, paid_service: JobService, credits: CreditService
) -> None:
    sim.hold = True
    await credits.set_default(GUILD, MOD, limit=1_000_000, period="total")
    await paid_service.create(video())
    await paid_service.create(video())
    with pytest.raises(QuotaRefused, match="2 videos in progress"):
        await paid_service.create(video())
    await credits.set_caps(GUILD, MOD, member=5, server=3)
    await paid_service.create(video(user=2))
    with pytest.raises(QuotaRefused, match="This server already has 3"):
        await paid_service.create(video(user=3))


async def test_servers_are_separate(credits: CreditService) -> None:
    await credits.set_member_limit(GUILD, MOD, ALICE, 1_000)
    await credits.set_default(OTHER_GUILD, MOD, 5_000, "day")
    assert (await credits.status(OTHER_GUILD, ALICE, ())).limit.source == "default"
    assert (await credits.status(GUILD, ALICE, ())).limit.millicredits == 1_000
    assert [e.action for e in await credits.store.audit_entries(OTHER_GUILD)] == ["default"]


async def test_every_moderator_action_is_audited_with_before_and_after(credits: CreditService) -> None:
    await credits.set_member_limit(GUILD, MOD, ALICE, 3_000)
    await credits.set_member_limit(GUILD, MOD, ALICE, 4_500)
    await credits.grant(GUILD, MOD, ALICE, 1_000, "bug bounty")
    entries = await credits.store.audit_entries(GUILD, target_id=ALICE)
    assert [(e.action, e.before, e.after) for e in entries] == [
        ("grant", "granted 0", "granted 1"),
        ("set", "limit 3", "limit 4.5"),
        ("set", "no override", "limit 3"),
    ]
    assert entries[0].reason == "bug bounty" and entries[0].moderator_id == MOD


async def test_a_discord_job_without_a_server_is_refused_before_anything_is_written(
    paid_service: JobService, store: Store, sim: KlingSimulator
) -> None:
    with pytest.raises(InvalidRequest, match="only be made in a server"):
        await paid_service.create(video(guild=None))  # type: ignore[arg-type]
    assert await store.count_by_status() == {} and sim.requests == []


async def test_changes_made_from_the_dashboard_are_audited_as_web(credits: CreditService) -> None:
    web = credits.acting_from("web")
    await web.set_member_limit(1, 9, 5, 7000)
    await web.grant(1, 9, 5, 1000, "thanks")
    await credits.block(1, 9, 5, "spam")  # the slash commands' service is unchanged
    entries = await credits.audit_entries(1)
    assert [(e.action, e.source) for e in entries] == [("block", "discord"), ("grant", "web"), ("set", "web")]
    assert (await credits.status(1, 5, ())).limit.source == "blocked"  # the same store: one set of quotas
