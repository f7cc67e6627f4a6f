"""The benchmark still runs end to end (its figures are read by people, not asserted here)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.postgres"]


async def test_the_quick_benchmark_prints_every_section() -> None:
    root = ROOT
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.run", "--quick", cwd=root, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, err.decode()[-2000:]
    table = [line for line in out.decode().splitlines() if line.startswith("| ")]
    sections = {line.split(" | ")[0].removeprefix("| ") for line in table[1:]}
    assert {"N=10", "N=1000", "plan", "delivery", "intake", "adaptive", "latency", "memory"} <= sections
    assert "| N=1000 | API requests per tick | 50 | floor 50, naive 1000 |" in table  # the floor, exactly


async def test_the_clips_benchmark_joins_by_copy_and_by_reencoding() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.clips", "--segments", "2", "--seconds", "1", "--size", "320x240", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    assert "(remux)" in text and "(reencode)" in text and text.count("-> 2.00 s of video") == 2


async def test_a_small_soak_of_two_processes_under_faults_loses_and_repeats_nothing(postgres_dsn: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--jobs", "20", "--processes", "2", "--faults", "0.1",
        "--kill-every", "0", "--render-seconds", "0.2", "--timeout", "60", "--database-url", postgres_dsn,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode() + err.decode()[-2000:]
    table = out.decode().splitlines()
    for zero in ("jobs lost", "jobs sent twice", "jobs posted twice", "credits out of balance (milli-credits)"):
        assert f"| {zero} | 0 |" in table
    assert any(line.startswith("| jobs delivered per second | ") for line in table)


async def test_the_callback_flood_benchmark_times_a_real_job_with_and_without_a_flood() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.callback_flood", "--samples", "1", "--connections", "2", "--flood-answers", "500",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    runs = [line.split(" | ")[0].removeprefix("| ") for line in out.decode().splitlines() if line.startswith("| ")]
    assert runs[1:] == ["no flood", "flood, rate limit on", "flood, rate limit off"]
