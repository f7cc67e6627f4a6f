"""Quota policy, pure: a member's limit, the period window, a job's cost. Credits are integer milli-credits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

Millicredits = int
Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")

# The provider's price list: about 0.8 units per second at 720p and 1.0 at 1080p.
DEFAULT_RATES: Mapping[str, Millicredits] = {"720p": 800, "1080p": 1000}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """The current period: when it started and when it resets (None for `total`)."""

    start: datetime
    reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class Limit:
    """A member's limit (None: unlimited) and where it comes from."""

    millicredits: Millicredits | None
    source: Literal["blocked", "override", "role", "default"]
    role_id: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a job may start, and if not, why."""

    allowed: bool
    reason: Literal["ok", "blocked", "no_credits", "member_busy", "server_busy"]
    remaining: Millicredits | None


def period_window(period: str, now: datetime) -> Window:
    """The calendar period (UTC) holding `now`; weeks start on Monday."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return Window(midnight, midnight + timedelta(days=1))
    if period == "week":
        start = midnight - timedelta(days=midnight.weekday())
        return Window(start, start + timedelta(days=7))
    if period == "month":
        start = midnight.replace(day=1)
        reset = (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )
        return Window(start, reset)
    if period == "total":
        return Window(EPOCH, None)
    raise ValueError(f"unknown period {period!r}")


def resolve_limit(
    *,
    default: Millicredits,
    override: Millicredits | None,
    role_limits: Mapping[int, Millicredits | None],
    blocked_reason: str | None,
) -> Limit:
    """Blocked, else the member's override, else the best of their roles (unlimited beats any number), else default."""
    if blocked_reason is not None:
        return Limit(0, "blocked", reason=blocked_reason)
    if override is not None:
        return Limit(override, "override")
    if role_limits:
        unlimited = [role for role, limit in role_limits.items() if limit is None]
        if unlimited:
            return Limit(None, "role", role_id=min(unlimited))
        role, best = max(
            ((r, v) for r, v in role_limits.items() if v is not None), key=lambda item: (item[1], -item[0])
        )
        return Limit(best, "role", role_id=role)
    return Limit(default, "default")


def remaining(
    limit: Limit, *, used: Millicredits, reserved: Millicredits, granted: Millicredits
) -> Millicredits | None:
    """Credits left this period (None: unlimited); never negative. Grants do not lift a block."""
    if limit.millicredits is None:
        return None
    if limit.source == "blocked":
        return 0
    return max(0, limit.millicredits + granted - used - reserved)


def check(
    limit: Limit,
    *,
    used: Millicredits,
    reserved: Millicredits,
    granted: Millicredits,
    cost: Millicredits,
    member_in_flight: int,
    member_in_flight_cap: int,
    server_in_flight: int,
    server_in_flight_cap: int,
) -> Decision:
    """May a job costing `cost` start now? Blocks first, then the in-flight caps, then the credits."""
    left = remaining(limit, used=used, reserved=reserved, granted=granted)
    if limit.source == "blocked":
        return Decision(False, "blocked", 0)
    if member_in_flight >= member_in_flight_cap:
        return Decision(False, "member_busy", left)
    if server_in_flight >= server_in_flight_cap:
        return Decision(False, "server_busy", left)
    if left is not None and cost > left:
        return Decision(False, "no_credits", left)
    return Decision(True, "ok", None if left is None else left - cost)


def job_cost(duration: int, resolution: str, rates: Mapping[str, Millicredits] = DEFAULT_RATES) -> Millicredits:
    """The credits a job reserves: its duration times the rate of its resolution."""
    if resolution not in rates:
        raise ValueError(f"no credit rate for resolution {resolution!r}")
    return duration * rates[resolution]


def parse_billed_amount(amount: str) -> Millicredits:
    """The provider's decimal string ("4.8") as milli-credits (4800), exactly."""
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a billable amount: {amount!r}")
    return int((value * 1000).to_integral_value())


def format_credits(millicredits: Millicredits) -> str:
    """Milli-credits as a plain decimal: 4000 -> "4", 4800 -> "4.8", 125 -> "0.125"."""
    text = f"{Decimal(millicredits) / 1000:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def seconds_of_720p(millicredits: Millicredits, rates: Mapping[str, Millicredits] = DEFAULT_RATES) -> int:
    """About how many seconds of 720p video these credits buy."""
    rate = rates.get("720p") or DEFAULT_RATES["720p"]
    return max(0, millicredits) // rate
