"""The pure quota policy: windows at calendar boundaries, precedence, costs and amounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.quota import (
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


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", at(2026, 3, 1, 23, 59, 59), at(2026, 3, 1), at(2026, 3, 2)),
        ("day", at(2026, 3, 2), at(2026, 3, 2), at(2026, 3, 3)),
        ("week", at(2026, 11, 29, 23, 59, 59), at(2026, 11, 23), at(2026, 11, 30)),  # Sunday night
        ("week", at(2026, 11, 30), at(2026, 11, 30), at(2026, 12, 7)),  # Monday 00:00
        ("month", at(2026, 1, 31, 12), at(2026, 1, 1), at(2026, 2, 1)),
        ("month", at(2028, 2, 29, 23, 59, 59), at(2028, 2, 1), at(2028, 3, 1)),  # leap year
        ("month", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 1), at(2027, 1, 1)),
        ("total", at(2026, 5, 5), datetime(1970, 1, 1, tzinfo=UTC), None),
    ],
)
def test_period_windows_follow_the_utc_calendar(period: str, now: datetime, start: datetime, reset: datetime) -> None:
    window = period_window(period, now)
    assert (window.start, window.reset_at) == (start, reset)


def test_windows_are_computed_in_utc_whatever_the_zone_of_now() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert period_window("day", datetime(2026, 6, 2, 8, tzinfo=tokyo)).start == at(2026, 6, 1)


def test_a_naive_time_or_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_window("day", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown period"):
        period_window("fortnight", at(2026, 1, 1))


def test_precedence() -> None:
    roles = {10: 5_000, 11: 9_000}
    assert resolve_limit(default=1, override=None, role_limits={}, blocked_reason=None) == Limit(1, "default")
    assert resolve_limit(default=1, override=None, role_limits=roles, blocked_reason=None) == Limit(9_000, "role", 11)
    with_unlimited = {**roles, 12: None}
    assert resolve_limit(default=1, override=None, role_limits=with_unlimited, blocked_reason=None).millicredits is None
    assert resolve_limit(default=1, override=7, role_limits=with_unlimited, blocked_reason=None) == Limit(7, "override")
    blocked = resolve_limit(default=1, override=7, role_limits=with_unlimited, blocked_reason="spam")
    assert (blocked.source, blocked.reason, blocked.millicredits) == ("blocked", "spam", 0)


def test_remaining_adds_grants_and_never_goes_negative() -> None:
    limit = Limit(10_000, "default")
    assert remaining(limit, used=4_000, reserved=2_000, granted=1_000) == 5_000
    assert remaining(limit, used=30_000, reserved=0, granted=0) == 0
    assert remaining(Limit(None, "role", 1), used=10**9, reserved=0, granted=0) is None
    assert remaining(Limit(0, "blocked", reason="x"), used=0, reserved=0, granted=50_000) == 0


def decide(limit: Limit, cost: int = 4_000, member: int = 0, server: int = 0) -> str:
    return check(limit, used=0, reserved=0, granted=0, cost=cost, member_in_flight=member, member_in_flight_cap=2,
                 server_in_flight=server, server_in_flight_cap=10).reason  # fmt: skip


def test_check_gives_each_reason() -> None:
    assert decide(Limit(4_000, "default")) == "ok"
    assert decide(Limit(3_999, "default")) == "no_credits"
    assert decide(Limit(0, "blocked", reason="r")) == "blocked"
    assert decide(Limit(None, "role", 1), member=2) == "member_busy"
    assert decide(Limit(None, "role", 1), server=10) == "server_busy"


def test_costs_and_amounts_are_exact() -> None:
    assert job_cost(5, "720p") == 4_000 and job_cost(15, "1080p") == 15_000 and job_cost(3, "720p") == 2_400
    with pytest.raises(ValueError):
        job_cost(5, "4k")
    assert [parse_billed_amount(a) for a in ("5", "4.8", "0.125", " 2.40 ")] == [5_000, 4_800, 125, 2_400]
    for bad in ("", "abc", "-1", "NaN", "inf"):
        with pytest.raises(ValueError):
            parse_billed_amount(bad)
    assert [format_credits(m) for m in (4_000, 4_800, 125, 0, 10_000)] == ["4", "4.8", "0.125", "0", "10"]
    assert seconds_of_720p(4_000) == 5 and seconds_of_720p(-5) == 0
