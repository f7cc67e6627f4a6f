"""The store's hot queries at growing history: every read a command or a tick runs, p50/p99 per size.

Run: `.venv/bin/python -m bench.store [--sizes 10000,100000,1000000]`. Each size is a fresh database of
300 servers and 30,000 members with a skewed share of jobs (a few members have thousands), spread over two years,
almost all finished and a handful open. Prints one table and, at the largest size, each query's plan.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import itertools
import math
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.core import quota
from bot.core.model import AT_PROVIDER, HOLDING_A_SLOT, OPEN, WAITING, Job, QuotaFacts, QuotaSettings
from bot.storage.sqlite import JOB_COLUMNS, MIGRATIONS, Store

SERVERS, MEMBERS = 300, 30_000
YEAR = 365 * 86400.0
NOW = 1_800_000_000.0
OPEN_JOBS = 40  # a handful in flight at any time, most of them recent
CALLS, BUDGET = 300, 3.0  # calls per query, capped by seconds per query so the slow "before" run still ends
FINAL_MIX = (("delivered", 0.90), ("failed", 0.05), ("cancelled", 0.04), ("undeliverable", 0.01))
# The job a timed reservation would write (it is always refused, so nothing is written).
PROBE = Job(*(None for _ in JOB_COLUMNS))  # type: ignore[arg-type]


@dataclass(frozen=True)
class World:
    """Who the queries are about: the heaviest member and a typical one, and their servers."""

    heavy: tuple[int, int]  # (guild_id, user_id)
    typical: tuple[int, int]
    heavy_job: str  # one job id of each, for the prefix look-up
    typical_job: str
    task_id: str


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def members(rng: random.Random) -> list[tuple[int, int]]:
    """(guild, user) by rank: rank 0 is the heaviest member; servers are skewed the same way."""
    server_weights = list(itertools.accumulate(1 / (s + 2) for s in range(SERVERS)))
    guilds = rng.choices(range(SERVERS), cum_weights=server_weights, k=MEMBERS)
    return [(10_000 + guilds[m], 500_000 + m) for m in range(MEMBERS)]


def rows(size: int, rng: random.Random, people: list[tuple[int, int]]) -> list[tuple[Any, ...]]:
    """`size` job rows: members drawn with weight 1/(rank + 10), created uniformly over two years."""
    weights = list(itertools.accumulate(1 / (r + 10) for r in range(MEMBERS)))
    owners = rng.choices(range(MEMBERS), cum_weights=weights, k=size)
    final_weights = list(itertools.accumulate(w for _, w in FINAL_MIX))
    out = []
    for n, owner in enumerate(owners):
        guild, user = people[owner]
        duration, resolution = rng.choice((5, 10)), rng.choice(("720p", "1080p"))
        estimate = 1000 * duration * (2 if resolution == "1080p" else 1)
        created = NOW - 2 * YEAR * rng.random() - 3600
        status = FINAL_MIX[bisect.bisect(final_weights, rng.random() * final_weights[-1])][0]
        if n < OPEN_JOBS:  # the open ones: the two measured members hold some, all recent
            status = OPEN[n % len(OPEN)]
            guild, user = people[0] if n % 3 == 0 else people[1000] if n % 3 == 1 else (guild, user)
            created = NOW - 60 * rng.random()
        sent = status not in ("reserved", "queued") and not (status in ("failed", "cancelled") and n % 2)
        settled = status in ("delivered", "undeliverable", "succeeded")
        values = {
            **dict.fromkeys(JOB_COLUMNS),
            "id": f"{rng.getrandbits(64):016x}", "guild_id": guild, "channel_id": guild + 1, "user_id": user,
            "kind": "text", "prompt": "a cat on a skateboard", "duration": duration, "resolution": resolution,
            "status": status, "provider_task_id": str(10**17 + n) if sent else None,
            "cost_estimate": estimate, "cost_billed": estimate if settled else None,
            "attempts": 1, "delivery_attempts": 1 if settled else 0, "created_at": created,
            "submitted_at": created + 2 if sent else None, "finished_at": created + 90 if settled else None,
            "updated_at": created + 100, "origin": "discord", "lookups": 0, "cancel_requested": 0,
        }  # fmt: skip
        out.append(tuple(values[c] for c in JOB_COLUMNS))
    return out


async def build(path: Path, size: int) -> tuple[Store, World]:
    """Rows written at schema 4 in one bulk transaction, then `Store.open` upgrades the file as it would a bot's
    (faster than through the newer indexes and triggers, and it exercises the upgrade on a big history)."""
    rng = random.Random(size)
    people = members(rng)
    data = rows(size, rng, people)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = OFF")  # a crashed build is simply thrown away
    raw.execute("PRAGMA cache_size = -1048576")
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        raw.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    # Only the columns of schema 4: later migrations add the rest (with their defaults) during the upgrade.
    present = {row[1] for row in raw.execute("PRAGMA table_info(jobs)")}
    kept = [n for n, name in enumerate(JOB_COLUMNS) if name in present]
    names = ", ".join(JOB_COLUMNS[n] for n in kept)
    marks = ", ".join("?" for _ in kept)
    raw.execute("BEGIN")
    raw.executemany(f"INSERT INTO jobs ({names}) VALUES ({marks})", ([r[n] for n in kept] for r in data))
    raw.execute("COMMIT")
    raw.close()
    store = await Store.open(path)
    await store._db.execute("PRAGMA optimize")

    def job_of(who: tuple[int, int]) -> str:
        return next(r[0] for r in data if (r[1], r[3]) == who)

    heavy, typical = people[0], people[1000]
    task = next(r[JOB_COLUMNS.index("provider_task_id")] for r in data[OPEN_JOBS:] if r[13])
    return store, World(heavy, typical, job_of(heavy), job_of(typical), task)


class Refuse:
    """A quota decision that writes nothing, so the reservation's reads can be timed over and over."""

    allowed = False


def queries(store: Store, world: World) -> dict[str, Callable[[], Awaitable[Any]]]:
    month = quota.period_window("month", datetime.fromtimestamp(NOW, UTC)).start.timestamp()
    out: dict[str, Callable[[], Awaitable[Any]]] = {}
    for who, (guild, user), job in (
        ("heavy", world.heavy, world.heavy_job),
        ("typical", world.typical, world.typical_job),
    ):

        def reserve(period: str, guild: int = guild, user: int = user) -> Callable[[], Awaitable[Any]]:
            def decide(facts: QuotaFacts) -> Refuse:
                return Refuse()

            settings = QuotaSettings(10**12, period, 10**6, 10**6)
            job = replace(PROBE, guild_id=guild, user_id=user)
            return lambda: store.reserve_job(
                job, role_ids=(1, 2), defaults=settings, window_start=lambda p: 0.0 if p == "total" else month,
                decide=decide,
            )  # fmt: skip

        out |= {
            f"reserve, total period ({who})": reserve("total"),
            f"reserve, month period ({who})": reserve("month"),
            f"/quota usage, total ({who})": lambda g=guild, u=user: store.usage(g, u, 0.0),
            f"/quota usage, month ({who})": lambda g=guild, u=user: store.usage(g, u, month),
            f"/video status: member_jobs OPEN ({who})": lambda g=guild, u=user: store.member_jobs(
                g, u, statuses=OPEN, limit=25
            ),
            f"autocomplete: member_jobs all ({who})": lambda g=guild, u=user: store.member_jobs(g, u, limit=25),
            f"autocomplete: member_jobs WAITING ({who})": lambda g=guild, u=user: store.member_jobs(
                g, u, statuses=WAITING, limit=25
            ),
            f"find_job by 8-char prefix ({who})": lambda g=guild, u=user, j=job: store.find_job(g, j[:8], user_id=u),
            f"/video history page 2 ({who})": lambda g=guild, u=user: store.member_jobs(g, u, limit=10, offset=10),
            f"count_member_jobs ({who})": lambda g=guild, u=user: store.count_member_jobs(g, u),
            f"metrics: credits_used total ({who}'s server)": lambda g=guild: store.credits_used(g, 0.0),
            f"metrics: credits_used month ({who}'s server)": lambda g=guild: store.credits_used(g, month),
        }
    out |= {
        "tick: jobs_in AT_PROVIDER": lambda: store.jobs_in(AT_PROVIDER, origin="discord"),
        "tick: jobs_in WAITING": lambda: store.jobs_in(WAITING, origin="discord"),
        "tick: jobs_in queued": lambda: store.jobs_in(("queued",), origin="discord"),
        "tick: jobs_in reserved": lambda: store.jobs_in(("reserved",), origin="discord"),
        "tick: count_in HOLDING_A_SLOT": lambda: store.count_in(HOLDING_A_SLOT),
        "tick: count_in queued": lambda: store.count_in(("queued",)),
        "tick: render_times": lambda: store.render_times(5, "720p"),
        "tick: job_by_task": lambda: store.job_by_task(world.task_id),
        "metrics: count_by_status": store.count_by_status,
    }
    return out


async def measure(call: Callable[[], Awaitable[Any]], calls: int = CALLS) -> tuple[float, float]:
    for _ in range(3):  # warm the cache: the bot's pages are hot too
        await call()
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET
    gc.disable()  # a collection in the middle of a sub-millisecond call is the bench's noise, not the store's
    try:
        while len(times) < calls and (len(times) < min(20, calls) or time.perf_counter() < deadline):
            started = time.perf_counter()
            await call()
            times.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return percentile(times, 50), percentile(times, 99)


async def plans(store: Store, named: dict[str, Callable[[], Awaitable[Any]]]) -> None:
    """Each query's plan, from the SQL the store really sends (recorded while calling it once)."""
    db = store._db
    original = db.execute
    print("\nEXPLAIN QUERY PLAN at the largest size")
    for name, call in named.items():
        if "(typical" in name:
            continue
        seen: list[tuple[str, Any]] = []

        def record(sql: str, params: Any = None, seen: list[tuple[str, Any]] = seen) -> Any:
            seen.append((sql, params))
            return original(sql, params)

        db.execute = record  # type: ignore[method-assign]
        try:
            await call()
        finally:
            db.execute = original  # type: ignore[method-assign]
        print(f"- {name}")
        for sql, params in seen:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            async with original(f"EXPLAIN QUERY PLAN {sql}", params or ()) as cursor:
                plan = " | ".join(r[3] for r in await cursor.fetchall())
            print(f"    {plan}")


async def main(sizes: list[int], calls: int = CALLS) -> None:
    results: dict[str, dict[int, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for size in sizes:
            started = time.perf_counter()
            store, world = await build(Path(tmp) / f"store{size}.sqlite3", size)
            print(f"built {size:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
            try:
                named = queries(store, world)
                for name, call in named.items():
                    results.setdefault(name, {})[size] = await measure(call, calls)
                if size == sizes[-1]:
                    await plans(store, named)
            finally:
                await store.close()
    first, last = sizes[0], sizes[-1]
    head = " | ".join(f"{s:,} p50 / p99 ms" for s in sizes)
    print(f"\n| query | {head} | p99 {last:,}/{first:,} |\n|---|{'---|' * len(sizes)}---|")
    for name, by_size in results.items():
        cells = " | ".join(f"{by_size[s][0] * 1000:.2f} / {by_size[s][1] * 1000:.2f}" for s in sizes)
        print(f"| {name} | {cells} | {by_size[last][1] / by_size[first][1]:.1f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated job counts")
    parser.add_argument("--calls", type=int, default=CALLS, help="calls timed per query (fewer: a smoke run)")
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.calls))
