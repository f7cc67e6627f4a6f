"""Every benchmark still runs end to end at a tiny size (its figures are read by people; here only that it exits 0
and prints them). A new module in bench/ fails `test_every_bench_has_a_smoke_run` until it gets one here."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.postgres"]


async def run_bench(module: str, *args: str, within: float = 120.0) -> str:
    """`python -m bench.MODULE ARGS` from the repository root; its standard output, once it exited 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.{module}", *args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, out.decode()[-2000:] + err.decode()[-2000:]
    return out.decode()


def table(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def check_run(text: str) -> None:
    rows = table(text)
    sections = {line.split(" | ")[0].removeprefix("| ") for line in rows[1:]}
    assert {"N=10", "N=100", "plan", "delivery", "intake", "adaptive", "latency", "memory"} <= sections
    assert "| N=100 | API requests per tick | 5 | floor 5, naive 100 |" in rows  # the floor, exactly


def check_clips(text: str) -> None:
    assert "(remux)" in text and "(reencode)" in text and text.count("-> 2.00 s of video") == 2


def check_flood(text: str) -> None:
    rows = table(text)
    done = "| videos delivered / undeliverable / failed / not done | 5 / 0 / 0 / 0 | 5 finished at once, 2 channel(s) |"
    assert done in rows
    assert any(line.startswith("| Discord requests per delivered video (from the finish) | ") for line in rows)
    assert any(line.startswith("| the bot's event loop lag p50 / p99 / max, ") for line in rows)
    assert "| measure | as it was (videos) | as it is | ratio |" in rows  # --compare: both runs side by side
    assert any(line.startswith("| 429s on the global limit | ") for line in rows)


def check_burst(text: str) -> None:
    assert "jobs: 2 (submitted)" in text
    assert re.search(r"event-loop lag \(ms\): p50 [\d.]+, p99 [\d.]+, max [\d.]+", text)
    assert re.search(r"memory \(MB\): peak RSS \d+", text)


def check_burst_discord(text: str) -> None:
    assert text.count("jobs submitted: 2 of 2") == 2  # today's way, then the bounded one
    assert re.search(r"\| /quota p99 \(ms\) \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", text)
    assert re.search(r"\| peak RSS over idle \(MB\) \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", text)


def check_images(text: str) -> None:
    figures = [line for line in text.splitlines() if re.search(r"(\s+[\d.]+){4}$", line)]
    assert len(figures) == 5, text  # before and after, memory and time, for each case


def check_store(text: str) -> None:
    rows = table(text)
    assert rows[0] == "| query | 1,000 p50 / p99 ms | p99 1,000/1,000 |"
    assert any(line.startswith("| tick: jobs_in AT_PROVIDER | ") for line in rows)
    assert len(rows) > 30 and "EXPLAIN QUERY PLAN" in text


def check_callback_flood(text: str) -> None:
    runs = [row.split(" | ")[0].removeprefix("| ") for row in table(text)]
    assert runs[1:] == ["no flood", "flood, rate limit on", "flood, rate limit off"], runs


def check_tick(text: str) -> None:
    rows = table(text)
    assert "| provider queries per tick | 10 | 10 | floor 10 |" in rows  # the same queries both ways
    assert re.search(r"ratio of wall times \(as it was / today\): [\d.]+", text)
    # --fleet 3: three processes ask once per interval together, where each asking at its own ticks asks three times.
    assert "| provider queries per poll interval, 3 processes | 10 | 30 | floor 10 (one process's tick) |" in rows


# bench module: (its tiny arguments, what its output must show)
SMOKE_RUNS: dict[str, tuple[list[str], Callable[[str], None]]] = {
    "run": (["--tiny"], check_run),
    "clips": (["--segments", "2", "--seconds", "1", "--size", "320x240"], check_clips),
    "flood": (["--videos", "5", "--channels", "2", "--acks", "3", "--members", "2", "--compare"], check_flood),
    "callback_flood": (["--samples", "1", "--connections", "2", "--flood-answers", "500"], check_callback_flood),
    "burst": (["--jobs", "2"], check_burst),
    "burst_discord": (["--images", "2", "--megabytes", "0.3", "--before"], check_burst_discord),
    "images": (["--scale", "0.1"], check_images),
    "store": (["--sizes", "1000", "--calls", "20"], check_store),
    "tick": (["--jobs", "200", "--ticks", "2", "--fleet", "3"], check_tick),
}
NEEDS_POSTGRES = {"soak"}  # smoke-run by its own test below


def test_every_bench_has_a_smoke_run() -> None:
    modules = {path.stem for path in (ROOT / "bench").glob("*.py")} - {"__init__"}
    assert modules - set(SMOKE_RUNS) - NEEDS_POSTGRES == set(), "a bench without a smoke run in this file"


@pytest.mark.parametrize("module", sorted(SMOKE_RUNS))
async def test_the_bench_runs_at_a_tiny_size(module: str) -> None:
    args, check = SMOKE_RUNS[module]
    check(await run_bench(module, *args))


async def test_a_small_soak_of_two_processes_under_faults_loses_and_repeats_nothing(postgres_dsn: str) -> None:
    text = await run_bench(
        "soak", "--jobs", "20", "--processes", "2", "--faults", "0.1", "--kill-every", "0", "--render-seconds", "0.2",
        "--timeout", "60", "--database-url", postgres_dsn,
    )  # fmt: skip
    rows = table(text)
    for zero in ("jobs lost", "jobs sent twice", "jobs posted twice", "credits out of balance (milli-credits)"):
        assert f"| {zero} | 0 |" in rows
    assert any(line.startswith("| jobs delivered per second | ") for line in rows)
