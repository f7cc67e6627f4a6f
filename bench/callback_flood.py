"""A real job's finish-to-post while another process floods the callback endpoint with random task ids.

Run: `.venv/bin/python -m bench.callback_flood` (`--samples 5 --connections 16 --flood-answers 20000`). The bot, the
Kling simulator and the fake Discord run in this process (tests/harness.py) with callbacks on and no secret (the
default); the flood comes from a child process (tests/flooder.py, source address 127.0.0.2) over a few kept-alive
connections, as fast as the endpoint answers. Each sample is one `/video text` job held at the provider, then
finished (the simulator calls back, from 127.0.0.1): the time to its post in its thread is measured. Three runs: no
flood; a flood against the default rate limit; a flood with the rate limit off (as behind a proxy, where every client
has the proxy's address). Prints one table.

The script only uses settings and attributes the bot has had for long, so it runs on an older checkout too (copy it
and tests/flooder.py there) to print the figures before a change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import prometheus_client

from bot.core.model import AT_PROVIDER
from tests.harness import Harness, callback_settings, harness

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def flooding(url: str, connections: int, answered: int) -> AsyncIterator[dict[str, int]]:
    """The flood, on once the endpoint has answered `answered` of it; the dict gets its answers by status at the
    end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.flooder", url, "--connections", str(connections),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    answers: dict[str, int] = {}
    try:
        while int((await asyncio.wait_for(process.stdout.readline(), 120)).split()[1]) < answered:
            pass
        yield answers
    finally:
        process.stdin.close()
        lines = (await asyncio.wait_for(process.stdout.read(), 60)).decode().splitlines()
        await process.wait()
        answers.update(json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {})


def posted(world: Harness, prompt: str) -> bool:
    return any(
        m["files"] for t in world.discord.threads() for m in world.discord.messages[t["id"]] if prompt in str(t["name"])
    )


async def one_job(world: Harness, prompt: str) -> float:
    """Seconds from the provider's finish to the video's post."""
    await world.discord.slash("video", {"prompt": prompt}, sub="text")
    while not (jobs := [j for j in await world.resources.store.jobs_in(AT_PROVIDER) if j.prompt == prompt]):
        await asyncio.sleep(0.01)
    [job] = jobs
    finished = time.perf_counter()
    world.sim.finish(job.provider_task_id)
    while not posted(world, prompt):
        await asyncio.sleep(0.005)
    return time.perf_counter() - finished


async def scenario(folder: Path, name: str, args: argparse.Namespace, flood: bool, rate_limit: bool) -> list[str]:
    async with harness(folder / name.replace(" ", "-")) as world:
        world.sim.hold = True  # each job renders until the bench finishes it
        world.settings_overrides = {
            **callback_settings(),
            "poll_interval_seconds": 10.0,  # the default: polling is only the safety net
            "default_quota_credits": 1e6,
        }
        if not rate_limit:
            world.settings_overrides["callback_rate_per_second"] = 0
        dropped = prometheus_client.REGISTRY.get_sample_value("kling_bot_callbacks_dropped_total") or 0.0
        answers: dict[str, int] = {}
        most_pending = 0
        async with world.running():
            poller = world.poller()

            async def watch() -> None:
                nonlocal most_pending
                while True:
                    most_pending = max(most_pending, len(poller.hinted))
                    await asyncio.sleep(0.005)

            watching = asyncio.create_task(watch())
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if flood:
                        url = world.settings_overrides["callback_public_url"]
                        answers = await stack.enter_async_context(flooding(url, args.connections, args.flood_answers))
                    times = [await one_job(world, f"{name} {n}") for n in range(args.samples)]
            finally:
                watching.cancel()
        dropped = (prometheus_client.REGISTRY.get_sample_value("kling_bot_callbacks_dropped_total") or 0.0) - dropped
    shown = ", ".join(f"{count} x {status}" for status, count in sorted(answers.items())) or "-"
    return [
        name,
        f"{statistics.median(times):.2f} / {max(times):.2f} s",
        shown,
        f"{most_pending}",
        f"{dropped:.0f}",
    ]


async def run(args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="callback-flood-") as scratch:
        folder = Path(scratch)
        rows.append(await scenario(folder, "no flood", args, flood=False, rate_limit=True))
        rows.append(await scenario(folder, "flood, rate limit on", args, flood=True, rate_limit=True))
        rows.append(await scenario(folder, "flood, rate limit off", args, flood=True, rate_limit=False))
    print(f"{args.samples} job(s) each; flood of {args.connections} connections, on for {args.flood_answers} answers")
    print("| run | finish to post, median / max | the flood's answers | most hints waiting | hints dropped |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="real jobs per run")
    parser.add_argument("--connections", type=int, default=16, help="the flood's connections")
    parser.add_argument("--flood-answers", type=int, default=20000, help="answers before the first job finishes")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
