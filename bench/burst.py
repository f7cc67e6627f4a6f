"""A burst of 20 image jobs of ~9 MB at once through the real JobService: event-loop lag, peak memory, time.

Run: `.venv/bin/python -m bench.burst` (after), `.venv/bin/python -m bench.burst --on-loop` (the old way: Base64 and
JSON encoded on the event loop, no limit on sends at once). Linux only: memory is the resident high-water mark.
The simulator runs in its own process, so its decoding of the bodies neither stalls our loop nor counts as ours.
The images themselves (~180 MB, held by the jobs as the bot's commands hold them) count in the peak.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image
from pydantic import SecretStr

from bot.core import dispatch, intake
from bot.core.jobs import JobRequest, JobService
from bot.media.images import check_first_frame
from bot.provider import kling
from bot.provider.kling import KlingClient
from bot.storage.sqlite import Store

API_KEY = "sim-key"
PROBE_SECONDS = 0.005


def noise_jpeg(seed: int, width: int = 3300, height: int = 2300) -> bytes:
    """A JPEG of random pixels (~9 MB at this size: noise does not compress), valid as a first frame."""
    pixels = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    pixels.putpixel((0, 0), (seed % 256, 0, 0))
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=95)
    return out.getvalue()


@contextlib.contextmanager
def simulator() -> Iterator[str]:
    """`python -m bot.provider.simulator` on a free port; yields the client's root URL.

    At low priority: it stands for a remote server, so it should not take the CPU from the bot we measure."""
    args = ["nice", "-n", "19", sys.executable, "-m", "bot.provider.simulator", "--port", "0", "--api-key", API_KEY]
    args += ["--render-seconds", "0"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # "Kling simulator on http://127.0.0.1:PORT/v1/ai (endpoint path 'sim')..."
        yield first.split(" on ")[1].split()[0] + "/sim"
    finally:
        process.terminate()
        process.wait()


class LagProbe:
    """Sleeps PROBE_SECONDS in a loop and records how late each wake-up is: the event loop's responsiveness."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(PROBE_SECONDS)
            self.lags.append(time.perf_counter() - started - PROBE_SECONDS)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LagProbe]:
        """Probe while the block runs."""
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def percentile(self, share: float) -> float:
        """The lag (seconds) that this share of wake-ups stayed under."""
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def encode_on_the_loop() -> None:
    """Put back the old way: Base64 and JSON encoded on the event loop, every send at once."""

    async def base64_on_loop(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    async def body_on_loop(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode()

    # Absent on the code before the change, which needs no patching. A start encodes the frame it was given
    # (intake); a job sent later encodes its stored frame (dispatch).
    if hasattr(intake, "base64_text"):
        intake.base64_text = base64_on_loop  # type: ignore[attr-defined]
        intake.send_slots = lambda: asyncio.Semaphore(1000)  # type: ignore[attr-defined]
        dispatch.base64_text = base64_on_loop  # type: ignore[attr-defined]
    if hasattr(kling, "encode_body"):
        kling.encode_body = body_on_loop  # type: ignore[attr-defined]


def reset_peak() -> int:
    """Make the resident high-water mark the current size (Linux); returns that size in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def status_kib(key: str) -> int:
    """A line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


async def one_job(service: JobService, path: Path, number: int) -> str:
    """What the bot does for one command: read the attachment, check it, reserve the job, send it."""
    data = await asyncio.to_thread(path.read_bytes)
    frame = await check_first_frame(data)
    request = JobRequest("image", f"burst {number}", image=frame, guild_id=1, user_id=number)
    job = await service.reserve(request)
    return (await service.start(job, request)).status


async def burst(root_url: str, files: list[Path], folder: Path) -> None:
    """Run every job at once under the probe and print the figures."""
    store = await Store.open(folder / "bot.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            client = KlingClient(session, root_url=root_url, api_key=SecretStr(API_KEY), timeout=120.0)
            service = JobService(store, client, provider_concurrency=len(files) + 1)
            await client.check_auth()  # connection made and everything imported before measuring
            gc.collect()
            before = reset_peak()
            started = time.perf_counter()
            async with LagProbe().running() as probe:
                statuses = await asyncio.gather(*(one_job(service, path, n) for n, path in enumerate(files)))
            elapsed = time.perf_counter() - started
    finally:
        await store.close()
    ms = [lag * 1000 for lag in probe.lags]
    print(f"jobs: {len(statuses)} ({', '.join(sorted(set(statuses)))}), {elapsed:.2f} s in all")
    print(
        f"event-loop lag (ms): p50 {probe.percentile(0.5) * 1000:.1f}, p99 {probe.percentile(0.99) * 1000:.1f}, "
        f"max {max(ms):.1f}, mean {statistics.fmean(ms):.1f} over {len(ms)} probes"
    )
    peak = status_kib("VmHWM")
    growth = (peak - before) / 1024
    print(f"memory (MB): peak RSS {peak / 1024:.0f}, at the start {before / 1024:.0f}, growth {growth:.0f}")


def main() -> None:
    """Make the images, start the simulator, run the burst."""
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--on-loop", action="store_true", help="encode on the event loop, as before the change")
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    if args.on_loop:
        encode_on_the_loop()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        files = []
        for number in range(args.jobs):
            files.append(folder / f"{number}.jpg")
            files[-1].write_bytes(noise_jpeg(number))
        sizes = [path.stat().st_size / 2**20 for path in files]
        way = "before (encoded on the loop)" if args.on_loop else "after (encoded in threads)"
        print(f"{way}: {len(files)} JPEGs of {min(sizes):.1f}-{max(sizes):.1f} MB, {sum(sizes):.0f} MB in all")
        with simulator() as root_url:
            asyncio.run(burst(root_url, files, folder))


if __name__ == "__main__":
    main()
