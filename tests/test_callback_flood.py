"""Unsigned callbacks are only hints, so anyone can send them: a flood of them must not hold up a real job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import callback_settings, harness

ROOT = Path(__file__).resolve().parent.parent


class Flood:
    """A flood of random-id callbacks from another process (source address 127.0.0.2)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.answers: dict[str, int] = {}  # by HTTP status, once it has stopped

    async def answered(self, count: int) -> None:
        """Wait until the endpoint has answered at least `count` of the flood's callbacks."""
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), 60)
            assert line.startswith(b"answered "), line
            if int(line.split()[1]) >= count:
                return


@contextlib.asynccontextmanager
async def flooding(url: str, *, shape: str = "digits", connections: int = 4) -> AsyncIterator[Flood]:
    """The flood runs while the block does; then its answers are in `Flood.answers`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.flooder", url, "--connections", str(connections), "--shape", shape,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    flood = Flood(process)
    try:
        yield flood
    finally:
        process.stdin.close()
        out = await asyncio.wait_for(process.stdout.read(), 30)
        await process.wait()
        lines = out.decode().splitlines()
        flood.answers = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}


@pytest.mark.parametrize("rate_limit", [True, False], ids=["rate-limited", "no-rate-limit"])
async def test_a_flood_of_random_ids_does_not_hold_up_a_real_jobs_delivery(tmp_path: Path, rate_limit: bool) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {
            **callback_settings(),
            "poll_interval_seconds": 60.0,  # no poll within the test: only the real callback can deliver
        }
        if not rate_limit:  # the hint path alone must hold (behind a proxy, every client has the proxy's address)
            world.settings_overrides["callback_rate_per_second"] = 0
        world.sim.hold = True
        async with world.running():
            await world.discord.slash("video", {"prompt": "a real job"}, sub="text")
            job = await world.job_in("submitted", "processing")
            async with flooding(world.settings_overrides["callback_public_url"]) as flood:
                await flood.answered(2000)  # the flood is on, and a backlog would have built up
                finished = time.monotonic()
                world.sim.finish(job.provider_task_id)  # the provider calls back, from 127.0.0.1
                await world.job_in("delivered")
                took = time.monotonic() - finished
    print(f"finish to delivered under the flood: {took:.2f} s; the flood's answers: {flood.answers}")
    assert took < 5.0
