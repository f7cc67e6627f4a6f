"""The pure quota policy: windows at calendar boundaries, precedence, costs and amounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest

from bot.core.quota import (
    Decision,
    Limit,
    check,
    format_credits,
    job_cost,
    parse_billed_amount,
    period_window,
    remaining,
    resolve_limit,
    seconds_of_720p,
)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", at(2026, 3, 1, 23, 59, 59), at(2026, 3, 1), at(2026, 3, 2)),  # the last second of a day
        ("day", at(2026, 3, 2), at(2026, 3, 2), at(2026, 3, 3)),
        ("day", at(2028, 2, 29, 12), at(2028, 2, 29), at(2028, 3, 1)),
        ("day", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 31), at(2027, 1, 1)),
        ("week", at(2026, 11, 29, 23, 59, 59), at(2026, 11, 23), at(2026, 11, 30)),  # Sunday night
        ("week", at(2026, 11, 30), at(2026, 11, 30), at(2026, 12, 7)),  # Monday 00:00
        ("week", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 28), at(2027, 1, 4)),  # across the new year
        ("month", at(2026, 1, 31, 23, 59, 59), at(2026, 1, 1), at(2026, 2, 1)),
        ("month", at(2026, 2, 1), at(2026, 2, 1), at(2026, 3, 1)),
        ("month", at(2028, 2, 29, 23, 59, 59), at(2028, 2, 1), at(2028, 3, 1)),  # leap year
        ("month", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 1), at(2027, 1, 1)),
        ("total", at(2026, 5, 5), datetime(1970, 1, 1, tzinfo=UTC), None),
    ],
)
def test_period_windows_follow_the_utc_calendar(
    period: str, now: datetime, start: datetime, reset: datetime | None
) -> None:
    window = period_window(period, now)
    assert (window.start, window.reset_at) == (start, reset)
    assert window.start <= now and (window.reset_at is None or now < window.reset_at)


def test_windows_are_computed_in_utc_whatever_the_zone_of_now() -> None:
    tokyo = timezone(timedelta(hours=9))
    window = period_window("day", datetime(2026, 6, 2, 8, tzinfo=tokyo))
    assert (window.start, window.reset_at) == (at(2026, 6, 1), at(2026, 6, 2))
    assert window.start.tzinfo is UTC


class NoOffset(tzinfo):
    """A zone that does not know its offset: Python counts such a time as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def test_a_naive_time_or_unknown_period_is_refused() -> None:
    for naive in (datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=NoOffset())):
        with pytest.raises(ValueError, match="aware"):
            period_window("day", naive)
    with pytest.raises(ValueError, match="unknown period"):
        period_window("fortnight", at(2026, 1, 1))


def limit_of(
    override: int | None = None, roles: dict[int, int | None] | None = None, blocked: str | None = None
) -> Limit:
    return resolve_limit(default=1_000, override=override, role_limits=roles or {}, blocked_reason=blocked)


def test_precedence_blocked_override_unlimited_role_highest_role_default() -> None:
    roles: dict[int, int | None] = {10: 5_000, 11: 9_000}
    assert limit_of() == Limit(1_000, "default")
    assert limit_of(roles=roles) == Limit(9_000, "role", 11)
    assert limit_of(roles={**roles, 12: 2_000}) == Limit(9_000, "role", 11)  # the highest, not the last
    assert limit_of(roles={**roles, 12: None}) == Limit(None, "role", 12)
    assert limit_of(roles={11: 0}) == Limit(0, "role", 11)  # a role set to 0 still beats the default
    assert limit_of(override=7, roles={**roles, 12: None}) == Limit(7, "override")
    assert limit_of(override=0) == Limit(0, "override")
    assert limit_of(override=7, roles={12: None}, blocked="spam") == Limit(0, "blocked", reason="spam")


def test_ties_between_roles_do_not_depend_on_order() -> None:
    tied = Limit(5_000, "role", 20)
    assert limit_of(roles={30: 5_000, 20: 5_000}) == limit_of(roles={20: 5_000, 30: 5_000}) == tied
    assert limit_of(roles={30: None, 20: None}).role_id == 20


def test_remaining_adds_grants_and_never_goes_negative() -> None:
    limit = Limit(10_000, "default")
    assert remaining(limit, used=4_000, reserved=2_000, granted=0) == 4_000
    assert remaining(limit, used=4_000, reserved=2_000, granted=1_000) == 5_000
    assert remaining(Limit(9_000, "role", 11), used=9_000, reserved=0, granted=2_500) == 2_500
    assert remaining(Limit(0, "override"), used=0, reserved=0, granted=3_000) == 3_000
    assert remaining(limit, used=30_000, reserved=0, granted=0) == 0
    assert remaining(limit, used=0, reserved=20_000, granted=5_000) == 0
    assert remaining(Limit(None, "role", 1), used=10**9, reserved=0, granted=5) is None
    assert remaining(Limit(0, "blocked", reason="x"), used=0, reserved=0, granted=50_000) == 0


def decide(
    limit: Limit, cost: int = 4_000, member: int = 0, server: int = 0, used: int = 0, granted: int = 0
) -> Decision:
    return check(limit, used=used, reserved=0, granted=granted, cost=cost, member_in_flight=member,
                 member_in_flight_cap=2, server_in_flight=server, server_in_flight_cap=10)  # fmt: skip


def test_check_gives_each_reason() -> None:
    assert decide(Limit(4_000, "default")) == Decision(True, "ok", 0)
    assert decide(Limit(10_000, "default"), used=1_000) == Decision(True, "ok", 5_000)
    assert decide(Limit(None, "role", 1)) == Decision(True, "ok", None)
    assert decide(Limit(3_999, "default")) == Decision(False, "no_credits", 3_999)
    assert decide(Limit(3_999, "default"), granted=1) == Decision(True, "ok", 0)  # a grant tips it over
    assert decide(Limit(0, "blocked", reason="r"), member=5) == Decision(False, "blocked", 0)
    assert decide(Limit(None, "role", 1), member=2) == Decision(False, "member_busy", None)
    assert decide(Limit(None, "role", 1), server=10) == Decision(False, "server_busy", None)
    assert decide(Limit(9_000, "default"), member=1, server=9) == Decision(True, "ok", 5_000)  # below caps


def test_job_cost_for_both_rates_and_custom_ones() -> None:
    assert (job_cost(5, "720p"), job_cost(3, "720p"), job_cost(15, "1080p")) == (4_000, 2_400, 15_000)
    assert job_cost(10, "720p", {"720p": 750}) == 7_500
    assert job_cost(0, "1080p") == 0
    with pytest.raises(ValueError, match="4k"):
        job_cost(5, "4k")
    with pytest.raises(ValueError, match="negative"):
        job_cost(-1, "720p")


@pytest.mark.parametrize(
    ("amount", "milli"),
    [("5", 5_000), ("4.8", 4_800), ("0.125", 125), (" 2.40 ", 2_400), ("0", 0), ("0.0", 0), (".5", 500),
     ("7.", 7_000), ("4.8000", 4_800), ("0.0001", 1), ("1.2341", 1_235), ("123456789012345678901234567890.1",
     123456789012345678901234567890_100)],
)  # fmt: skip
def test_billed_amounts_are_exact(amount: str, milli: int) -> None:
    assert parse_billed_amount(amount) == milli


GARBAGE = ["", " ", ".", "abc", "-1", "-0", "+1", "NaN", "inf", "1e3", "1_000", "4,8", "\u0664"]  # Arabic 4


@pytest.mark.parametrize("bad", GARBAGE)
def test_garbage_billed_amounts_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_billed_amount(bad)


def test_format_credits_is_exact_and_plain() -> None:
    assert [format_credits(m) for m in (4_000, 4_800, 125, 0, 10_000, 1, 1_050)] == [
        "4", "4.8", "0.125", "0", "10", "0.001", "1.05",
    ]  # fmt: skip
    assert [format_credits(m) for m in (-1_500, -5)] == ["-1.5", "-0.005"]
    assert format_credits(10**30 + 1) == "1" + "0" * 27 + ".001"


def test_seconds_of_720p_floor() -> None:
    assert (seconds_of_720p(4_000), seconds_of_720p(4_799), seconds_of_720p(799)) == (5, 5, 0)
    assert seconds_of_720p(-5) == 0
    assert seconds_of_720p(3_000, {"720p": 1_000, "1080p": 1_500}) == 3
