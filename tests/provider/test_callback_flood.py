"""Unsigned callbacks are only hints, so anyone can send them: a flood of them must not hold up a real job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import prometheus_client
import pytest

from tests.fake_discord import wait_until
from tests.harness import callback_settings, harness

ROOT = Path(__file__).resolve().parents[2]


def dropped() -> float:
    """Hints dropped so far in this process (the counter is process-wide)."""
    return prometheus_client.REGISTRY.get_sample_value("kling_bot_callbacks_dropped_total") or 0.0


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
async def flooding(url: str, *, shape: str = "digits", connections: int = 16) -> AsyncIterator[Flood]:
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
            "poll_interval_seconds": 60.0,  # no poll within the test: only the callbacks can deliver
        }
        if not rate_limit:  # the hint path alone must hold (behind a proxy, every client has the proxy's address)
            world.settings_overrides["callback_rate_per_second"] = 0
        world.sim.hold = True
        dropped_before, most_pending = dropped(), 0
        async with world.running():
            await world.discord.slash("video", {"prompt": "a real job"}, sub="text")
            job = await world.job_in("submitted", "processing")
            poller = world.poller()
            poller.max_pending_hints = 20  # small, so that this flood overflows it (the default is 2000)

            async def watch_pending() -> None:
                nonlocal most_pending
                while True:
                    most_pending = max(most_pending, len(poller.hinted))
                    await asyncio.sleep(0.002)

            watching = asyncio.create_task(watch_pending())
            try:
                async with flooding(world.settings_overrides["callback_public_url"]) as flood:
                    await flood.answered(20000)  # the flood has been on for seconds: a backlog would have built up
                    finished = time.monotonic()
                    world.sim.finish(job.provider_task_id)  # the provider calls back, from 127.0.0.1
                    await world.job_in("delivered")
                    took = time.monotonic() - finished
            finally:
                watching.cancel()
    print(f"finish to delivered under the flood: {took:.2f} s; answers {flood.answers}; most pending {most_pending}")
    assert took < 5.0
    assert most_pending <= 20
    if rate_limit:  # the flood's address used its burst and then its 50 a second; the provider's (127.0.0.1) is apart
        assert flood.answers.get("429", 0) > 2 * flood.answers.get("204", 0)
    else:
        assert flood.answers.get("204", 0) >= 20000 and dropped() > dropped_before


async def test_hints_dropped_in_a_flood_do_not_lose_a_real_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {**callback_settings(), "poll_interval_seconds": 60.0}
        world.sim.hold = True
        dropped_before = dropped()
        async with world.running():
            await world.discord.slash("video", {"prompt": "its hint is dropped"}, sub="text")
            job = await world.job_in("submitted", "processing")
            world.poller().max_pending_hints = 0  # full: every hint is dropped, the real job's too
            world.sim.finish(job.provider_task_id)
            await wait_until(lambda: dropped() > dropped_before, within=5)

            async def delivered() -> bool:
                current = await world.resources.store.get_job(job.id)
                return current is not None and current.status == "delivered"

            await wait_until(delivered, within=5)  # every job at the provider was asked about instead
