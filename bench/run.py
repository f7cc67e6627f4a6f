"""Benchmarks of the real bot against the Kling simulator and the fake Discord, beside a naive bot and the floor.

Run: `.venv/bin/python -m bench.run` (add `--quick` for small sizes, `--tiny` for a smoke run). Prints one table;
figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from bot.core.credits import CreditService
from bot.core.jobs import JobService
from bot.core.model import AT_PROVIDER, Job, QuotaSettings
from bot.media.downloads import download_video
from bot.provider.kling import MAX_IDS_PER_QUERY, KlingClient
from bot.provider.sim_tasks import SimTask
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import JOB_COLUMNS, Store

KEY = "bench-key"
ROWS: list[tuple[str, str, str, str]] = []  # section, measure, ours, baseline or floor


def row(section: str, measure: str, ours: str, other: str = "") -> None:
    ROWS.append((section, measure, ours, other))
    print(f"  {section:<10} {measure:<48} {ours:>18}  {other}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


TEMPLATE = Job(
    id="", guild_id=1, channel_id=2, user_id=3, kind="text", prompt="bench", duration=5, resolution="720p",
    aspect_ratio="16:9", image_sha256=None, image_url=None, image_source=None, status="processing",
    provider_task_id=None, provider_status="processing", error=None, video_url=None, video_seconds=None,
    billed_amount=None, cost_estimate=4000, cost_billed=None, attachment_size_limit=None, message_id=None,
    thread_id=None, status_message_id=None, result_message_id=None, attempts=1, delivery_attempts=0,
    created_at=0.0, submitted_at=0.0, finished_at=None, delivered_at=None, updated_at=0.0,
)  # fmt: skip


async def bulk_insert(store: Store, jobs: list[Job]) -> None:
    """Many rows in one transaction (the bench's shortcut; the bot writes one job at a time)."""
    marks = ", ".join("?" for _ in JOB_COLUMNS)
    async with store.transaction() as db:
        await db.executemany(
            f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({marks})",
            [tuple(getattr(job, c) for c in JOB_COLUMNS) for job in jobs],
        )


@contextlib.asynccontextmanager
async def core(folder: Path, name: str) -> AsyncIterator[tuple[KlingSimulator, Store, KlingClient, JobService]]:
    sim = KlingSimulator(api_key=KEY, endpoint_path="bench", render_seconds=10**9)
    sim.hold = True
    await sim.start()
    store = await Store.open(folder / f"{name}.sqlite3")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
            kling = KlingClient(session, root_url=f"{sim.base_url()}/bench", api_key=SecretStr(KEY))
            yield sim, store, kling, JobService(store, kling, provider_concurrency=10**9, job_timeout=10**9)
    finally:
        await store.close()
        await sim.close()


async def in_flight(sim: KlingSimulator, store: Store, n: int, now: float) -> None:
    jobs = []
    for index in range(n):
        task_id = str(901930004609634393 + index)
        sim.tasks[task_id] = SimTask(task_id, f"j{index}", "text", "bench", 5, "720p", time.monotonic(), None,
                                     status="processing")  # fmt: skip
        jobs.append(replace(TEMPLATE, id=f"j{index}", provider_task_id=task_id, created_at=now, submitted_at=now,
                            updated_at=now))  # fmt: skip
    await bulk_insert(store, jobs)


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await call()
    return time.perf_counter() - wall, time.process_time() - cpu


async def bench_polling(folder: Path, sizes: list[int], repeats: int) -> None:
    print("Polling cost per tick, jobs in flight (ours: batched 20 per query; naive: a task per job, all at once)")
    for n in sizes:
        async with core(folder, f"poll{n}") as (sim, store, kling, service):
            await in_flight(sim, store, n, time.time())
            walls, cpus, dbs, requests = [], [], [], 0
            for _ in range(repeats):
                before = len(sim.requests)
                db_wall, _ = await timed(lambda: store.jobs_in(AT_PROVIDER))
                wall, cpu = await timed(service.poll_once)
                requests = len(sim.requests) - before
                walls.append(wall)
                cpus.append(cpu)
                dbs.append(db_wall)
            naive_walls = []
            for _ in range(repeats if n <= 1000 else 1):
                jobs = await store.jobs_in(AT_PROVIDER)

                async def naive(jobs: list[Job] = jobs) -> None:
                    # What open-source bots do: every job polls itself, concurrently.
                    await asyncio.gather(*(kling.query([job.provider_task_id or ""]) for job in jobs))

                naive_walls.append((await timed(naive))[0])
            floor = math.ceil(n / MAX_IDS_PER_QUERY)
            row(f"N={n}", "API requests per tick", f"{requests}", f"floor {floor}, naive {n}")
            ours, base = statistics.median(walls), statistics.median(naive_walls)
            row(f"N={n}", "wall time per tick", ms(ours), f"naive {ms(base)} ({base / ours:.0f}x ours)")
            row(f"N={n}", "CPU time per tick", ms(statistics.median(cpus)))
            row(f"N={n}", "database time to find the jobs in flight", ms(statistics.median(dbs)))


async def bench_store(folder: Path, total: int) -> None:
    print(f"Store with {total:,} jobs (finding the jobs to poll; checking and reserving a quota)")
    for size in (10_000, total):
        async with core(folder, f"store{size}") as (sim, store, _, _):
            now = time.time()
            batch = 50_000
            for start in range(0, size, batch):
                # History: other members, and the measured member's (user 3) older periods; they have 50 jobs
                # in the current period whatever the table's size, so any growth would be the store's fault.
                await bulk_insert(store, [
                    replace(TEMPLATE, id=f"h{i}", status="delivered", user_id=3 if i % 10 == 0 else 1000 + i % 5000,
                            created_at=now - (i if i < 500 else 90 * 86400 + i), updated_at=now)
                    for i in range(start, min(size, start + batch))
                ])  # fmt: skip
            await in_flight(sim, store, 100, now)
            find = [(await timed(lambda: store.jobs_in(AT_PROVIDER)))[0] for _ in range(50)]
            credits = CreditService(store, QuotaSettings(10**12, "month", 10**6, 10**6))
            reserve = []
            for i in range(200):
                job = replace(TEMPLATE, id=f"r{i}", status="reserved", created_at=now, updated_at=now)
                reserve.append((await timed(lambda job=job, credits=credits: credits.reserve(job, (7, 8))))[0])
            label = f"{size:,} rows"
            row(label, "find jobs to poll p50 / p99", f"{ms(percentile(find, 50))} / {ms(percentile(find, 99))}")
            row(label, "check and reserve a quota p50 / p99",
                f"{ms(percentile(reserve, 50))} / {ms(percentile(reserve, 99))}")  # fmt: skip
            if size == total:
                for name, sql, params in [
                    ("poll", "SELECT id FROM jobs WHERE status IN (?, ?) ORDER BY created_at", AT_PROVIDER),
                    ("usage", "SELECT SUM(cost_estimate) FROM jobs WHERE guild_id = ? AND user_id = ? "
                              "AND created_at >= ?", (1, 3, now - 86400)),
                    ("member in flight", "SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND user_id = ? AND status "
                                         "IN ('reserved', 'queued', 'submitted', 'processing')", (1, 3)),
                ]:  # fmt: skip
                    async with store._db.execute(f"EXPLAIN QUERY PLAN {sql}", params) as cursor:
                        plan = " | ".join(r[3] for r in await cursor.fetchall())
                    row("plan", name, "", plan)


async def bench_delivery(folder: Path, megabytes: int) -> None:
    print(f"Delivery of a {megabytes} MB video (streamed to a file vs a plain aiohttp read into memory)")
    source = folder / "serve"
    source.mkdir()
    (source / "video.mp4").write_bytes(os.urandom(1024 * 1024) * megabytes)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split("port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/video.mp4"
        async with aiohttp.ClientSession() as session:
            for label, fetch in [
                (
                    "ours (bot.media.downloads)",
                    lambda: download_video(session, url, folder / "out.mp4", max_bytes=None),
                ),
                ("plain aiohttp read()", lambda: plain_read(session, url)),
            ]:
                tracemalloc.start()
                wall = time.perf_counter()
                await fetch()
                wall = time.perf_counter() - wall
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                row("delivery", f"{label}: peak Python memory", f"{peak / 1024 / 1024:.1f} MB",
                    f"{megabytes / wall:.0f} MB/s")  # fmt: skip
    finally:
        server.terminate()
        server.wait()


async def plain_read(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as response:
        await response.read()


async def bench_intake(folder: Path, count: int) -> None:
    from tests.harness import harness

    print(f"Intake: {count} /video text interactions at once through the fake Discord")
    async with harness(folder / "intake") as world:
        world.sim.hold = True
        world.settings_overrides = {
            "member_jobs_in_flight": 100, "server_jobs_in_flight": 1000, "provider_concurrency": 1000,
            "default_quota_credits": 1e6, "poll_interval_seconds": 5.0,
        }  # fmt: skip
        (folder / "intake").mkdir(exist_ok=True)
        async with world.running():
            users = list(world.discord.users)
            started = time.perf_counter()
            sent = await asyncio.gather(*(
                world.discord.slash("video", {"prompt": f"clip {i}"}, sub="text", user=users[i % len(users)])
                for i in range(count)
            ))  # fmt: skip
            while await world.resources.store.count_in(("submitted", "queued", "processing")) < count:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            while not all(any("on its way" in t for t in i.texts()) for i in sent):  # let every command finish
                await asyncio.sleep(0.05)
        latencies = [i.first_answer_at - i.sent_at for i in sent if i.first_answer_at is not None]
    row("intake", "dispatch to first response p50 / p99",
        f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))}", "Discord allows 3000 ms")  # fmt: skip
    row("intake", "jobs created per second", f"{count / elapsed:.0f}", f"{count} in {elapsed:.1f} s")


async def bench_adaptive(folder: Path, jobs: int, render: float, interval: float) -> None:
    print(f"Fixed against adaptive polling, virtual time: {jobs} jobs of {render:g} s, interval {interval:g} s")
    results = {}
    for adaptive, every in ((False, interval), (False, interval / 4), (True, interval)):
        now = [1_800_000_000.0]
        async with core(folder, f"adaptive{adaptive}{every}") as (sim, store, kling, _):
            sim.clock = lambda now=now: now[0]
            sim.render_seconds, sim.processing_after, sim.hold = render, 5.0, False
            service = JobService(
                store, kling, provider_concurrency=10**9, adaptive=adaptive, clock=lambda now=now: now[0]
            )
            await bulk_insert(store, [  # recent history of this shape: it takes `render` seconds
                replace(TEMPLATE, id=f"old{n}", status="delivered", submitted_at=now[0] - 900 - render,
                        finished_at=now[0] - 900, created_at=now[0] - 900 - render)
                for n in range(5)
            ])  # fmt: skip
            from bot.core.jobs import JobRequest

            for n in range(jobs):
                await service.create(JobRequest("text", f"clip {n}"))
                now[0] += 0.37  # members do not all press Enter in the same second
            before = len(sim.requests)
            while await store.count_in(AT_PROVIDER):
                now[0] += await service.suggested_delay(every)
                await service.poll_once()
            queries = sum(1 for r in sim.requests[before:] if r.path.endswith("/kling/tasks"))
            done = await store.jobs_in(("succeeded",))
            tasks = {t.id: t for t in sim.tasks.values()}
            late = [j.finished_at - (tasks[j.provider_task_id].created + render) for j in done]  # type: ignore[operator, index]
            results[(adaptive, every)] = (queries, statistics.median(late), max(late))
    for (adaptive, every), (queries, median, worst) in results.items():
        label = f"adaptive, base {every:g} s" if adaptive else f"fixed every {every:g} s"
        row("adaptive", f"{label}: queries, latency median / max", f"{queries}",
            f"{median:.1f} s / {worst:.1f} s after the finish")  # fmt: skip


async def bench_latency(folder: Path, samples: int, interval: float, callbacks: bool = False) -> None:
    from tests.harness import harness
    from tests.ports import free_port

    how = "with callbacks" if callbacks else f"polling every {interval:g} s"
    print(f"Latency from 'the provider finished' to 'the video is in the thread', {how}")
    async with harness(folder / f"latency{callbacks}") as world:
        world.sim.hold = True
        world.settings_overrides = {"poll_interval_seconds": interval, "default_quota_credits": 1e6}
        if callbacks:
            port = free_port()
            world.settings_overrides.update(callback_public_url=f"http://127.0.0.1:{port}/kling/callback",
                                            callback_host="127.0.0.1", callback_port=port)  # fmt: skip
        latencies = []
        async with world.running():
            for n in range(samples):
                await world.discord.slash("video", {"prompt": f"latency {n}"}, sub="text")
                while await world.resources.store.count_in(("processing",)) == 0:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(interval * (n + 0.5) / samples)  # finish at different phases of the tick
                finished = time.perf_counter()
                world.sim.finish()
                while not any(m["files"] for t in world.discord.threads() for m in world.discord.messages[t["id"]]
                              if f"latency {n}" in str(t["name"])):  # fmt: skip
                    await asyncio.sleep(0.005)
                latencies.append(time.perf_counter() - finished)
    row("latency", f"finished to posted, {how}: median / max",
        f"{ms(statistics.median(latencies))} / {ms(max(latencies))}")  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_memory(folder: Path, jobs: int) -> None:
    from tests.fake_discord import FakeDiscord
    from tests.ops.test_discord_process import bot_env

    print(f"Resident memory of the bot process: idle, and with {jobs:,} jobs in flight")
    fake, sim = FakeDiscord(), KlingSimulator(api_key="sk-harness-secret-key-0123", endpoint_path="proc")
    sim.hold = True
    await fake.start()
    await sim.start()
    (folder / "memory").mkdir()
    env = bot_env(fake, sim, folder / "memory", POLL_INTERVAL_SECONDS="0.5", LOG_LEVEL="ERROR")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", env=env, cwd=folder / "memory",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await fake.wait_ready(within=30)
        await asyncio.sleep(1.0)
        idle = rss_mb(process.pid)
        store = await Store.open(folder / "memory" / "bot.sqlite3")
        await in_flight(sim, store, jobs, time.time())
        await store.close()
        before = len(sim.requests)
        await asyncio.sleep(3.0)  # several ticks over every job
        busy = rss_mb(process.pid)
        polled = len(sim.requests) - before
    finally:
        process.send_signal(15)
        await process.wait()
        await sim.close()
        await fake.close()
    row("memory", "resident memory, idle", f"{idle:.0f} MB")
    row("memory", f"resident memory, {jobs:,} jobs in flight", f"{busy:.0f} MB", f"{polled} queries in 3 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--tiny", action="store_true", help="the smallest sizes, for the test suite's smoke run")
    parser.add_argument("--runs", type=int, default=1, help="run everything N times; print min / median / max")
    args = parser.parse_args()
    size = "tiny" if args.tiny else "quick" if args.quick else "full"

    def pick(full: Any, quick: Any, tiny: Any) -> Any:
        return {"full": full, "quick": quick, "tiny": tiny}[size]

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            folder = Path(tmp)
            await bench_polling(folder, pick([10, 100, 1000, 10_000], [10, 100, 1000], [10, 100]), repeats=3)
            await bench_store(folder, pick(1_000_000, 100_000, 20_000))
            await bench_delivery(folder, pick(100, 20, 2))
            await bench_intake(folder, pick(200, 50, 5))
            await bench_adaptive(folder, pick(100, 20, 5), 40.0, 10.0)
            samples, interval = pick(5, 3, 1), pick(2.0, 1.0, 0.5)
            await bench_latency(folder, samples, interval)
            await bench_latency(folder, samples, interval, callbacks=True)
            await bench_memory(folder, pick(10_000, 1000, 100))

    logging.basicConfig(level=logging.ERROR)
    runs = []
    for _ in range(args.runs):
        ROWS.clear()
        asyncio.run(run())
        runs.append(list(ROWS))
    print(f"\n{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, {args.runs} run(s)")
    print("\n| section | measure | ours | baseline / floor |\n|---|---|---|---|")
    for index, (section, measure, ours, other) in enumerate(runs[0]):
        ours = spread([run[index][2] for run in runs])
        other = spread([run[index][3] for run in runs])
        print(f"| {section} | {measure} | {ours} | {other} |")


def spread(values: list[str]) -> str:
    """One figure as min / median / max over the runs when it is a plain number with a unit, else the first."""
    parsed = [value.split(" ", 1) for value in values]
    try:
        numbers = sorted(float(number) for number, _ in parsed)
    except ValueError:
        return values[0]
    if len(values) == 1 or len({unit for _, unit in parsed}) != 1:
        return values[0]
    unit = parsed[0][1]
    return f"{numbers[0]:g} / {statistics.median(numbers):g} / {numbers[-1]:g} {unit}"


if __name__ == "__main__":
    main()
