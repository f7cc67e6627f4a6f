"""One poll tick with N jobs in flight: today's tick beside the tick as it was, in one run, and the ratio.

Run: `.venv/bin/python -m bench.tick [--jobs 10000] [--ticks 5] [--concurrency 4] [--latency-ms 0] [--fleet N]`.
The Kling simulator runs in a child process (`--serve`), as the provider runs on another machine, holding N tasks in
`processing` (with `--latency-ms`, each answer comes that much later, as over a network); the bot's side (a SQLite
file with the N jobs, the client, `JobService.poll_once`) runs here. The ticks of both ways alternate, so a machine
shared with other work slows both alike. Nothing moves: every tick asks about every job (no render history, so
none is skipped as too early), as in the steady state of N long renders.

With `--fleet N`, also the provider queries per poll interval of N services on the one database (N processes), each
ticking once per interval (the clock is advanced, not waited for): today's, which ask about each job once per
interval together, beside services whose every tick asks, as each process's did while it knew only its own questions.

"The tick as it was" is the code before this bench: every job's whole row read twice (the list of jobs in flight,
then the claim's `RETURNING`) and the queries sent one after another; it is kept here only to be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr

from bench.flood import fakes_process
from bench.run import TEMPLATE, bulk_insert
from bot.core.jobs import JobChange, JobService
from bot.core.model import AT_PROVIDER, InFlight
from bot.ops.heap import tune_collector
from bot.provider.kling import MAX_IDS_PER_QUERY, TASKS, KlingClient
from bot.provider.sim_tasks import SimTask
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store

KEY = "bench-tick-key"
FLEET_INTERVAL = 10.0  # POLL_INTERVAL_SECONDS of the --fleet figure (its clock is advanced, not waited for)
FIRST_TASK = 901930004609634393


def task_id(n: int) -> str:
    return str(FIRST_TASK + n)


async def serve(jobs: int, latency: float) -> None:
    """The child: the simulator holding `jobs` tasks in processing, each answer `latency` seconds late (a network
    between us and the provider); prints its URL, serves until stdin closes."""
    sim = KlingSimulator(api_key=KEY, endpoint_path="tick", render_seconds=10**9)
    sim.hold = True
    if latency > 0:
        sim.fail_next("slow", on="query", times=10**9, delay=latency)
    await sim.start()
    if sim._ticker is not None:  # held tasks never move: spare the child walking them every tick
        sim._ticker.cancel()
    sim.requests = _Uncounted()
    for n in range(jobs):
        sim.tasks[task_id(n)] = SimTask(task_id(n), f"j{n}", "text", "bench", 5, "720p", time.monotonic(), None,
                                        status="processing")  # fmt: skip
    print(json.dumps({"sim": sim.base_url(), "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await sim.close()


class _Uncounted(list[Any]):
    """The simulator's request log, kept empty: the bench counts queries on its own side."""

    def append(self, item: Any) -> None:
        pass


class TickAsItWas(JobService):
    """`poll_once` as it was before the narrow rows and the concurrent queries (its client asks one at a time)."""

    async def poll_once(self, *, sweep: bool = True) -> list[JobChange]:
        changes = await self._settle_reserved(everything=False)
        in_flight = await self.store.jobs_in(AT_PROVIDER, origin=self.origin)
        # The due check takes narrow rows today; these say "never asked", as the in-memory map did on a first tick.
        narrow = [InFlight(j.id, j.status, j.provider_task_id, j.duration, j.resolution, j.created_at, j.submitted_at,
                           j.lease_owner, j.lease_attempt, None) for j in in_flight]  # fmt: skip
        due = {job.id for job in await self._due(narrow)}
        overdue = {job.id for job in in_flight if self._past_late_limit(job)}
        claimed = await self._claim(AT_PROVIDER, ids=[*due | overdue]) if due | overdue else []
        try:
            moved = await self._ask([job for job in claimed if job.id in due])
            changes.extend(moved)
            moved_ids = {change.job.id for change in moved}
            changes.extend(await self._give_up_late([j for j in claimed if j.id in overdue and j.id not in moved_ids]))
        finally:
            await self.release_claims(claimed)
        if sweep:
            changes.extend(await self._time_out())
        changes.extend(await self.dispatch_once())
        return changes


class CountedClient(KlingClient):
    """The client, counting the provider queries it sends (each attempt, as they reach the provider). Counted here
    rather than by an aiohttp trace, which made each query cost 15-25% more of this process's CPU: the bot's
    provider session has no trace, so the bench would measure a slower client than the bot runs."""

    counter: list[int]  # one count shared by the clients of a bench run (set by `tick_world`)

    async def _exchange(self, method: Literal["GET", "POST"], path: str, **kwargs: Any) -> Any:
        if path == TASKS:
            self.counter[0] += 1
        return await super()._exchange(method, path, **kwargs)


def cpu_of(pid: int) -> float:
    """CPU seconds a process has used (Linux), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await call()
    return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.asynccontextmanager
async def tick_world(
    jobs: int, latency: float
) -> AsyncIterator[tuple[Store, Callable[[int], KlingClient], list[int], int]]:
    """The simulator's child holding `jobs` tasks, a SQLite file with their jobs, a client maker (queries at once),
    the count of provider queries sent so far and the child's pid."""
    queries = [0]
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        async with fakes_process(
            "--jobs", str(jobs), "--latency-ms", str(latency * 1000), module="bench.tick"
        ) as where:
            store = await Store.open(Path(tmp) / "tick.sqlite3")
            now = time.time()
            await bulk_insert(store, [
                replace(TEMPLATE, id=f"j{n}", provider_task_id=task_id(n), created_at=now, submitted_at=now,
                        updated_at=now)
                for n in range(jobs)
            ])  # fmt: skip
            try:
                connector = aiohttp.TCPConnector(limit=100)
                async with aiohttp.ClientSession(connector=connector) as session:

                    def client(at_once: int) -> CountedClient:
                        root = f"{where['sim']}/tick"
                        counted = CountedClient(
                            session, root_url=root, api_key=SecretStr(KEY), query_concurrency=at_once
                        )
                        counted.counter = queries
                        return counted

                    yield store, client, queries, where["pid"]
            finally:
                await store.close()


async def bench(
    jobs: int, ticks: int, concurrency: int, latency: float, tuned: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds and provider queries of each tick, for both ways."""
    async with tick_world(jobs, latency) as (store, client, queries, pid):
        ways = {
            "as it was": TickAsItWas(store, client(1), provider_concurrency=10**9, job_timeout=10**9),
            "today": JobService(store, client(concurrency), provider_concurrency=10**9, job_timeout=10**9),
        }
        figures: dict[str, dict[str, list[float]]] = {way: {"wall": [], "cpu": [], "q": [], "sim": []} for way in ways}
        for service in ways.values():  # warm: connections open, caches hot
            await service.poll_once()
        if tuned:
            tune_collector()  # as the bot does after start-up (both ways run in this process alike)
        for _ in range(ticks):
            for name, service in ways.items():
                before, sim_before = queries[0], cpu_of(pid)
                wall, cpu = await timed(service.poll_once)
                figures[name]["wall"].append(wall)
                figures[name]["cpu"].append(cpu)
                figures[name]["q"].append(queries[0] - before)
                figures[name]["sim"].append(cpu_of(pid) - sim_before)
    return figures


async def fleet(jobs: int, processes: int, intervals: int, concurrency: int) -> dict[str, list[int]]:
    """Provider queries per poll interval of `processes` services on one database, each ticking once in every
    interval (their ticks spread over it): today's, whose due check reads when the fleet last asked from the rows,
    beside services whose every tick asks (as each process's did before: it knew only its own questions)."""
    moment = [time.time()]

    def clock() -> float:
        return moment[0]

    async with tick_world(jobs, 0.0) as (store, client, queries, _):
        options: dict[str, Any] = {"provider_concurrency": 10**9, "job_timeout": 10**9, "clock": clock}
        ways = {
            "today": [JobService(store, client(concurrency), owner=f"today-{n}", poll_interval=FLEET_INTERVAL,
                                 **options) for n in range(processes)],
            "every tick asks": [JobService(store, client(concurrency), owner=f"every-tick-{n}", **options)
                                for n in range(processes)],
        }  # fmt: skip
        figures: dict[str, list[int]] = {way: [] for way in ways}
        for name, services in ways.items():
            for _ in range(intervals):
                before = queries[0]
                for service in services:
                    await service.poll_once()
                    moment[0] += FLEET_INTERVAL / processes
                figures[name].append(queries[0] - before)
    return figures


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(jobs: int, ticks: int, concurrency: int, latency: float, figures: dict[str, dict[str, list[float]]]) -> None:
    old, new = figures["as it was"], figures["today"]
    ratio = statistics.median(old["wall"]) / statistics.median(new["wall"])
    floor = math.ceil(jobs / MAX_IDS_PER_QUERY)
    rows = [
        ("provider queries per tick", f"{statistics.median(new['q']):g}", f"{statistics.median(old['q']):g}",
         f"floor {floor}"),
        ("wall time per tick, median", ms(statistics.median(new["wall"])), ms(statistics.median(old["wall"])),
         f"{ratio:.1f}x faster"),
        ("wall time per tick, min / max", f"{ms(min(new['wall']))} / {ms(max(new['wall']))}",
         f"{ms(min(old['wall']))} / {ms(max(old['wall']))}", ""),
        ("CPU time per tick (this process), median", ms(statistics.median(new["cpu"])),
         ms(statistics.median(old["cpu"])), ""),
        ("the simulator's CPU time per tick (its process), median", ms(statistics.median(new["sim"])),
         ms(statistics.median(old["sim"])), "the provider's side: not ours"),
    ]  # fmt: skip
    print(f"\n{jobs:,} jobs in flight, {ticks} ticks of each way, {concurrency} queries at once today, "
          f"{latency * 1000:g} ms added to each answer; "
          f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")  # fmt: skip
    print("\n| measure | today | as it was | beside it |\n|---|---|---|---|")
    for measure, today, before, other in rows:
        print(f"| {measure} | {today} | {before} | {other} |")
    print(f"\nratio of wall times (as it was / today): {ratio:.2f}")


def report_fleet(jobs: int, processes: int, intervals: int, figures: dict[str, list[int]]) -> None:
    floor = math.ceil(jobs / MAX_IDS_PER_QUERY)
    today, before = figures["today"], figures["every tick asks"]
    print(f"\n{processes} processes on one database, {jobs:,} jobs in flight, {intervals} poll intervals, each process "
          "ticking once in every interval")  # fmt: skip
    print("\n| measure | today | every tick asks | beside it |\n|---|---|---|---|")
    print(f"| provider queries per poll interval, {processes} processes | {statistics.median(today):g} | "
          f"{statistics.median(before):g} | floor {floor} (one process's tick) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tick", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=5, help="ticks measured for each way")
    parser.add_argument("--concurrency", type=int, default=4, help="queries at once (POLL_CONCURRENCY)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each answer (a network's round trip)")
    parser.add_argument("--default-gc", action="store_true", help="leave the collector as Python sets it")
    parser.add_argument("--fleet", type=int, default=0, metavar="N",
                        help="also: provider queries per poll interval with N processes on one database")  # fmt: skip
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    if args.serve:
        asyncio.run(serve(args.jobs, latency))
        return
    logging.basicConfig(level=logging.ERROR)
    figures = asyncio.run(bench(args.jobs, args.ticks, args.concurrency, latency, tuned=not args.default_gc))
    report(args.jobs, args.ticks, args.concurrency, latency, figures)
    print("collector:", "Python's defaults" if args.default_gc else "tuned as the bot tunes it (bot/ops/heap.py)")
    if args.fleet:
        intervals = max(args.ticks, 2)
        report_fleet(args.jobs, args.fleet, intervals, asyncio.run(fleet(args.jobs, args.fleet, intervals, 4)))


if __name__ == "__main__":
    main()
