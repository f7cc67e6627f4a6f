"""Quota policy, pure: a member's limit, the period window, a job's cost, in integer milli-credits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

Millicredits = int
Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")

# The provider's price list: about 0.8 units per second at 720p and 1.0 at 1080p, sound included. A rate with sound
# is the resolution's key with SOUND after it ("720p+sound"); without one, sound costs what silence does.
DEFAULT_RATES: Mapping[str, Millicredits] = {"720p": 800, "1080p": 1000}
SOUND = "+sound"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Plain digits only: no sign, exponent or underscores, so "1e999999999" cannot make a huge integer.
_AMOUNT = re.compile(r"([0-9]*)(?:\.([0-9]*))?")


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
    """Whether a job may start; `remaining` is after this job when allowed, before it when refused."""

    allowed: bool
    reason: Literal["ok", "blocked", "no_credits", "member_busy", "server_busy"]
    remaining: Millicredits | None


def period_window(period: str, now: datetime) -> Window:
    """The calendar period (UTC) holding `now`; weeks start on Monday. `now` must be timezone-aware."""
    if now.utcoffset() is None:
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
        return Window(start, start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1))
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
    """Blocked, else the member's override, else their best role (unlimited beats numbers), else default."""
    if blocked_reason is not None:
        return Limit(0, "blocked", reason=blocked_reason)
    if override is not None:
        return Limit(override, "override")
    if not role_limits:
        return Limit(default, "default")
    unlimited = [role for role, value in role_limits.items() if value is None]
    if unlimited:
        return Limit(None, "role", role_id=min(unlimited))
    # Ties go to the lowest role id, so the answer does not depend on the mapping's order.
    numbered = [(r, v) for r, v in role_limits.items() if v is not None]
    role, best = max(numbered, key=lambda rv: (rv[1], -rv[0]))
    return Limit(best, "role", role_id=role)


def remaining(
    limit: Limit, *, used: Millicredits, reserved: Millicredits, granted: Millicredits
) -> Millicredits | None:
    """Credits left this period, bonus grants included (None: unlimited); never negative; a block stays 0."""
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
    """May a job costing `cost` start now? A block first, then the in-flight caps, then the credits."""
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


def job_cost(
    duration: int, resolution: str, rates: Mapping[str, int] = DEFAULT_RATES, *, with_sound: bool = False
) -> Millicredits:
    """The credits a job reserves: its duration (seconds) times the rate of its resolution (with sound or not)."""
    if resolution not in rates:
        raise ValueError(f"no credit rate for resolution {resolution!r}")
    if duration < 0:
        raise ValueError(f"a duration cannot be negative: {duration}")
    return duration * rates.get(resolution + SOUND if with_sound else resolution, rates[resolution])


def parse_billed_amount(amount: str) -> Millicredits:
    """The provider's decimal string ("4.8") as milli-credits (4800), exactly; a sub-milli rest rounds up."""
    match = _AMOUNT.fullmatch(amount.strip())
    whole, fraction = match.groups() if match else ("", None)
    if not (whole or fraction):
        raise ValueError(f"not a billable amount: {amount!r}")
    fraction = fraction or ""
    extra = 1 if fraction[3:].strip("0") else 0  # never charge less than the provider billed
    return int(whole or "0") * 1000 + int(fraction[:3].ljust(3, "0")) + extra


def format_credits(millicredits: Millicredits) -> str:
    """Milli-credits as a plain decimal: 4000 -> "4", 4800 -> "4.8", 125 -> "0.125", -1500 -> "-1.5"."""
    whole, milli = divmod(abs(millicredits), 1000)
    sign = "-" if millicredits < 0 else ""
    return f"{sign}{whole}.{milli:03d}".rstrip("0").rstrip(".")


def seconds_of_720p(millicredits: Millicredits, rates: Mapping[str, Millicredits] = DEFAULT_RATES) -> int:
    """About how many whole seconds of 720p video these credits buy (0 for none or fewer)."""
    rate = rates.get("720p") or DEFAULT_RATES["720p"]
    return max(0, millicredits) // rate
