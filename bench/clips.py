"""What Continue and Join cost the bot: the last frame of a segment, joining segments by copy or re-encoding, and
how long a Continue's last frame and the event loop wait while a re-encoding Join runs.

Run: `.venv/bin/python -m bench.clips [--segments 4] [--seconds 5] [--size 1280x720] [--threads 2]`. The segments
are made with PyAV like the provider's (H.264, one colour per second so the encoder has real frames), in a temp
folder. "now" is the bot's arrangement (last frames on a thread of their own, joins in a process); "before" is the
one it replaced, emulated: one thread for both, x264's default preset.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.media import clips
from bot.provider.sim_videos import make_clip


def segment(seconds: int, width: int, height: int, fps: int, seed: int) -> bytes:
    colours = [((seed * 40 + n * 30) % 200 + 20, (n * 50) % 200 + 20, (seed * 70) % 200 + 20) for n in range(seconds)]
    return make_clip([c for c in colours for _ in range(fps)], width=width, height=height, fps=fps)


async def timed(run: Callable[[], Awaitable[Any]], repeat: int = 3) -> tuple[float, Any]:
    """The best of `repeat` runs, in milliseconds, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best, result


async def during(join: Awaitable[Any], last_frame: Callable[[], Awaitable[bytes]]) -> tuple[float, list[float], float]:
    """Run `join`; meanwhile read last frames one after the other and tick the loop every 10 ms. Returns the join's
    milliseconds, each last frame's latency and the loop's worst lag (ms)."""
    task = asyncio.ensure_future(join)
    started = time.perf_counter()
    latencies: list[float] = []
    worst_lag = 0.0

    async def frames() -> None:
        await asyncio.sleep(0.05)  # the join is under way
        while not latencies or not task.done():  # at least one, even after a quick join
            asked = time.perf_counter()
            await last_frame()
            latencies.append((time.perf_counter() - asked) * 1000)

    async def ticks() -> None:
        nonlocal worst_lag
        while not task.done():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            worst_lag = max(worst_lag, (time.perf_counter() - before) * 1000 - 10)

    await asyncio.gather(task, frames(), ticks())
    return (time.perf_counter() - started) * 1000, latencies, worst_lag


def report(label: str, join_ms: float, latencies: list[float], lag: float) -> None:
    print(
        f"{label}: join {join_ms:8.0f} ms; last frame during it: {len(latencies)} read, median "
        f"{statistics.median(latencies):6.0f} ms, worst {max(latencies):6.0f} ms; loop lag worst {lag:5.0f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--threads", type=int, default=2, help="x264 threads (JOIN_ENCODE_THREADS)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-clips-") as folder:
        paths = []
        for n in range(args.segments):
            path = Path(folder) / f"{n}.mp4"
            path.write_bytes(segment(args.seconds, width, height, 24, n))
            paths.append(path)
        odd = Path(folder) / "odd.mp4"  # another size: joining it forces re-encoding
        odd.write_bytes(segment(args.seconds, width // 2, height // 2, 24, 99))
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.segments} segments of {args.seconds} s at {width}x{height}, {size:.1f} MB in all")
        clips.start_joins(1)
        ms, _ = await timed(lambda: clips.last_frame(paths[0]))
        print(f"last frame of one segment:                 {ms:8.0f} ms")
        out = Path(folder) / "joined.mp4"
        plan = await clips.plan_join(paths)
        ms, joined = await timed(lambda: clips.join(plan, out, threads=args.threads))
        how, seconds = f"({joined.how}):", joined.seconds
        print(f"join {args.segments} matching segments {how:12} {ms:8.0f} ms  -> {seconds:.2f} s of video")
        mixed = await clips.plan_join([*paths[:-1], odd])
        ms, joined = await timed(lambda: clips.join(mixed, out, threads=args.threads), repeat=1)
        print(
            f"join with one of another size ({joined.how}): {ms:8.0f} ms  -> {joined.seconds:.2f} s of video, "
            f"{mixed.frames} frames, {out.stat().st_size / 1e6:.1f} MB (estimated {mixed.estimated_bytes / 1e6:.1f}), "
            f"{joined.cpu_seconds:.1f} s of CPU in the join process"
        )
        report(
            "now   ", *await during(clips.join(mixed, out, threads=args.threads), lambda: clips.last_frame(paths[0]))
        )
        clips.stop_joins()
        await before(mixed, out, paths[0], args.threads)


async def before(plan: clips.JoinPlan, out: Path, segment_path: Path, threads: int) -> None:
    """The arrangement before: the join and the last frames on one thread of the bot's process."""
    shared = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    clips.ENCODE_PRESET = "medium"  # x264's default, as then (a module setting: this process only)
    join = loop.run_in_executor(shared, clips._join_in_process, plan, out, threads)
    report("before", *await during(join, lambda: loop.run_in_executor(shared, clips._last_frame, segment_path)))
    shared.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
