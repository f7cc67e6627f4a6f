"""What Continue and Join cost the bot: the last frame of a segment, and joining segments by copy or re-encoding.

Run: `.venv/bin/python -m bench.clips [--segments 4] [--seconds 5] [--size 1280x720]`. The segments are made
with PyAV like the provider's (H.264, one colour per second so the encoder has real frames), in a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot import clips
from bot.simulator import make_clip


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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--size", default="1280x720")
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
        ms, _ = await timed(lambda: clips.last_frame(paths[0]))
        print(f"last frame of one segment:                 {ms:8.0f} ms")
        out = Path(folder) / "joined.mp4"
        ms, how = await timed(lambda: clips.join(paths, out))
        seconds = await clips.duration(out)
        print(f"join {args.segments} matching segments ({how}):      {ms:8.0f} ms  -> {seconds:.2f} s of video")
        ms, how = await timed(lambda: clips.join([*paths[:-1], odd], out), repeat=1)
        seconds = await clips.duration(out)
        print(f"join with one of another size ({how}): {ms:8.0f} ms  -> {seconds:.2f} s of video")


if __name__ == "__main__":
    asyncio.run(main())
