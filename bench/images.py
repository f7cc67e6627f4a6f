"""Peak memory and time of first-frame checks, the old way (decode everything) beside the new one.

Run: `.venv/bin/python -m bench.images [--scale 1]`. Each figure comes from a fresh process (Linux only): Pillow
allocates pixels with plain malloc, invisible to tracemalloc, so we read the resident high-water mark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bot.media.images import ImageRejected, check_first_frame, prepare_first_frame

CASES = {  # name: (file, how many at once)
    "PNG 6324x6324 (40 MP, flat)": ("png40", 1),
    "JPEG 4000x3000 (12 MP photo)": ("jpeg12", 1),
    "JPEG 9000x4000 (36 MP photo)": ("jpeg36", 1),
    "8 x PNG 6324x6324 at once": ("png40", 8),
    "8 x JPEG 9000x4000 at once": ("jpeg36", 8),
}


def _photo(width: int, height: int) -> Image.Image:
    noise = Image.effect_noise((width, height), 48)
    ramp = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (noise, ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def _write_files(folder: Path, scale: float) -> None:
    def side(pixels: int) -> int:
        return max(1, round(pixels * scale))

    Image.new("RGB", (side(6324), side(6324)), (200, 80, 40)).save(folder / "png40", "PNG")
    _photo(side(4000), side(3000)).save(folder / "jpeg12", "JPEG", quality=85)
    _photo(side(9000), side(4000)).save(folder / "jpeg36", "JPEG", quality=70)


def _old_check(data: bytes) -> None:
    # What the bot did before: every pixel decoded at full size, whatever the size.
    image = Image.open(io.BytesIO(data))
    image.load()


def _new_check(data: bytes) -> None:
    with contextlib.suppress(ImageRejected):  # a refusal is a finished check too
        prepare_first_frame(data)


async def _new_checks(data: bytes, count: int) -> None:
    await asyncio.gather(*(check_first_frame(data) for _ in range(count)), return_exceptions=True)


async def _old_checks(data: bytes, count: int) -> None:
    await asyncio.gather(*(asyncio.to_thread(_old_check, data) for _ in range(count)))


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def _measure_here(way: str, path: Path, count: int) -> None:
    """In the child process: one case, printed as 'peak_mb seconds'."""
    data = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far becomes the current size
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    if count == 1:
        (_old_check if way == "before" else _new_check)(data)
    else:
        asyncio.run((_old_checks if way == "before" else _new_checks)(data, count))
    elapsed = time.perf_counter() - started
    print(f"{(_status_kib('VmHWM') - before) / 1024:.1f} {elapsed:.3f}")


def _measure(way: str, path: Path, count: int) -> tuple[float, float]:
    args = [sys.executable, "-m", "bench.images", "--one", way, str(path), str(count)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    """Print one line per case: peak memory growth and time, before and after."""
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        _measure_here(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="each image's sides times this (0.1: a smoke run)")
    scale = parser.parse_args().scale
    with tempfile.TemporaryDirectory() as folder:
        _write_files(Path(folder), scale)
        if scale != 1.0:
            print(f"images scaled by {scale:g} a side: the case names give the full sizes")
        print(f"{'case':<32} {'before MB':>10} {'before s':>9} {'after MB':>9} {'after s':>8}")
        for name, (file, count) in CASES.items():
            old_mb, old_s = _measure("before", Path(folder) / file, count)
            new_mb, new_s = _measure("after", Path(folder) / file, count)
            print(f"{name:<32} {old_mb:>10.1f} {old_s:>9.3f} {new_mb:>9.1f} {new_s:>8.3f}")


if __name__ == "__main__":
    main()
