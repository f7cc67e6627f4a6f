"""First frames are checked for real with Pillow, whatever their names say."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from bot.media import images
from bot.media.images import FirstFrame, ImageRejected, check_first_frame, prepare_first_frame
from tests.conftest import make_image
from tests.fake_discord import wait_until


def test_a_png_within_limits_is_sent_unchanged() -> None:
    data = make_image(640, 360)
    frame = prepare_first_frame(data)
    assert frame.data == data and frame.mime == "image/png" and frame.converted_from is None


def test_webp_is_converted_to_jpeg() -> None:
    frame = prepare_first_frame(make_image(640, 480, "WEBP"))
    assert frame.mime == "image/jpeg" and frame.converted_from == "WEBP"
    assert Image.open(io.BytesIO(frame.data)).format == "JPEG"


def test_transparent_webp_keeps_its_alpha_as_png() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (400, 400), (0, 0, 0, 0)).save(out, "WEBP", lossless=True)
    assert prepare_first_frame(out.getvalue()).mime == "image/png"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (make_image(299, 600), "at least 300"),
        (make_image(300, 751), "too elongated"),
        (make_image(1, 5000), "at least 300"),
        (make_image(400, 400, "GIF"), "GIF image"),
        (b"%PDF-1.4 not an image", "not a readable image"),
        (make_image(640, 480)[:200], "not a readable image"),
        (b"x" * (21 * 1024 * 1024), "too large"),
    ],
    ids=["small", "elongated", "strip", "gif", "pdf", "truncated", "huge"],
)
def test_bad_images_are_refused_with_what_to_change(data: bytes, message: str) -> None:
    with pytest.raises(ImageRejected, match=message):
        prepare_first_frame(data)


def test_a_decompression_bomb_is_an_error_not_a_warning() -> None:
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # tiny file, 400 million pixels
    with pytest.raises(ImageRejected, match="too many"):
        prepare_first_frame(out.getvalue())


def _photo(width: int, height: int) -> Image.Image:
    """Photo-like pixels (noise over a gradient), so JPEG files have realistic sizes and truncation matters."""
    noise = Image.effect_noise((width, height), 48)
    ramp = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (noise, ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def _plain_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour RGB PNG written row by row, so even a huge one never exists as pixels in this process."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_PEAK_SCRIPT = """
import sys
from pathlib import Path
from bot.media.images import ImageRejected, prepare_first_frame

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

data = Path(sys.argv[1]).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # the peak so far becomes the current size
before = status("VmRSS")
try:
    frame = prepare_first_frame(data)
    outcome = f"{frame.width}x{frame.height}"
except ImageRejected as exc:
    outcome = str(exc)
print(status("VmHWM") - before)
print(outcome)
"""


def _checked_in_fresh_process(data: bytes, tmp_path: Path) -> tuple[float, str]:
    """Peak memory growth (MB) of one check, and its outcome.

    Pillow allocates pixels with plain malloc, which tracemalloc does not see, so we read Linux's
    resident high-water mark (reset just before) in a process that does nothing else.
    """
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc to measure peak memory")
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)], cwd=root, capture_output=True, text=True, check=True
    )
    grown_kib, outcome = done.stdout.splitlines()
    return int(grown_kib) / 1024, outcome


def test_the_first_picture_of_an_mpo_is_sent_as_a_plain_jpeg() -> None:
    ramp = Image.linear_gradient("L").resize((800, 600))
    first = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_180), Image.new("L", (800, 600), 30)))
    second = Image.new("RGB", (800, 600), (0, 0, 255))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"

    frame = prepare_first_frame(out.getvalue())

    assert frame.mime == "image/jpeg" and frame.converted_from == "MPO" and (frame.width, frame.height) == (800, 600)
    sent = Image.open(io.BytesIO(frame.data))
    assert sent.format == "JPEG" and getattr(sent, "n_frames", 1) == 1 and "mp" not in sent.info
    # The pixels are the first picture's (JPEG twice over, so near, not equal), not the blue second one.
    assert ImageStat.Stat(ImageChops.difference(sent.convert("RGB"), first)).mean == pytest.approx([0, 0, 0], abs=2)
    assert ImageStat.Stat(ImageChops.difference(sent.convert("RGB"), second)).mean[2] > 150


def test_a_huge_png_is_refused_from_its_header_without_decoding_its_pixels(tmp_path: Path) -> None:
    data = _plain_png(6324, 6324, (200, 80, 40))  # ~130 KB of file, 40 MP: 160 MB once decoded
    grown_mb, outcome = _checked_in_fresh_process(data, tmp_path)
    assert "6324x6324" in outcome and "Resize it to 4096 pixels" in outcome and "send it as a JPG" in outcome
    assert grown_mb < 40


def test_a_big_jpeg_is_decoded_at_half_scale_and_downscaled_to_the_limit(tmp_path: Path) -> None:
    out = io.BytesIO()
    _photo(9000, 4000).save(out, "JPEG", quality=70)  # 36 MP: 144 MB if decoded at full size
    grown_mb, outcome = _checked_in_fresh_process(out.getvalue(), tmp_path)
    assert outcome == "4096x1820"
    assert grown_mb < 120  # decoded at 4500x2000 (36 MB) and resized (30 MB), not 144 MB at full size

    frame = prepare_first_frame(out.getvalue())
    assert frame.mime == "image/jpeg" and frame.converted_from == "JPEG" and len(frame.data) <= 10 * 1024 * 1024
    assert Image.open(io.BytesIO(frame.data)).size == (4096, 1820)


def test_a_12_megapixel_photo_is_sent_unchanged_but_still_read_to_its_end(tmp_path: Path) -> None:
    out = io.BytesIO()
    _photo(4000, 3000).save(out, "JPEG", quality=85)
    data = out.getvalue()
    frame = prepare_first_frame(data)
    assert frame.data == data and frame.converted_from is None and (frame.width, frame.height) == (4000, 3000)
    grown_mb, _ = _checked_in_fresh_process(data, tmp_path)
    assert grown_mb < 20  # checked at 1/8 scale, not the 48 MB of a full decode
    with pytest.raises(ImageRejected, match="not a readable image"):
        prepare_first_frame(data[: len(data) * 9 // 10])


@pytest.mark.parametrize("size", [(50_001, 1000), (8000, 6300)], ids=["strip", "photo"])
def test_more_than_50_megapixels_is_refused_before_decoding(size: tuple[int, int]) -> None:
    out = io.BytesIO()
    Image.new("1", size).save(out, "PNG")
    with pytest.raises(ImageRejected, match=r"too many; send one under 50\.0 megapixels"):
        prepare_first_frame(out.getvalue())


class _CountingCheck:
    """Stands in for prepare_first_frame: records how many run at once and holds each until let go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entered: asyncio.Queue[int] = asyncio.Queue()
        self.let_go = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def __call__(self, data: bytes) -> FirstFrame:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            now = self.running
        self.loop.call_soon_threadsafe(self.entered.put_nowait, now)
        self.let_go.acquire()
        with self.lock:
            self.running -= 1
        return FirstFrame(data, "image/png", 640, 360, None)


async def test_at_most_two_checks_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingCheck(asyncio.get_running_loop())
    monkeypatch.setattr(images, "prepare_first_frame", counting)
    checks = [asyncio.create_task(check_first_frame(bytes([n]))) for n in range(8)]
    try:
        for _ in range(2):
            assert await asyncio.wait_for(counting.entered.get(), 10) <= 2
        for _ in range(6):  # let one finish, and the next may start
            counting.let_go.release()
            assert await asyncio.wait_for(counting.entered.get(), 10) <= 2
    finally:
        counting.let_go.release(8)  # no thread stays blocked, even when an assertion failed
    frames = await asyncio.gather(*checks)
    assert [frame.data for frame in frames] == [bytes([n]) for n in range(8)]
    assert counting.most == 2


async def test_a_cancelled_check_keeps_its_slot_until_its_thread_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingCheck(asyncio.get_running_loop())
    monkeypatch.setattr(images, "prepare_first_frame", counting)
    first, second = (asyncio.create_task(check_first_frame(b"x")) for _ in range(2))
    try:
        for _ in range(2):
            await asyncio.wait_for(counting.entered.get(), 10)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        third = asyncio.create_task(check_first_frame(b"y"))
        for _ in range(3):
            await asyncio.sleep(0)  # lets the third task reach its slot (or, were the slot freed, its thread)
        assert counting.entered.empty()
        counting.let_go.release()  # one of the two running checks ends, cancelled or not
        await asyncio.wait_for(counting.entered.get(), 10)
    finally:
        counting.let_go.release(3)
    assert (await second).data == b"x" and (await third).data == b"y"
    assert counting.most == 2


async def test_a_checked_download_stays_in_its_file_until_the_frame_is_dropped(tmp_path: Path) -> None:
    import gc

    data = make_image(640, 360)
    for name, content in (("png", data), ("webp", make_image(640, 480, "WEBP"))):
        download = tmp_path / name
        download.write_bytes(content)
        frame = await images.check_first_frame_file(download)
        assert isinstance(frame.content, Path) and frame.content.exists()  # not held in memory
        kept = frame.content
        async with images.frame_bytes(frame) as read:
            assert read == kept.read_bytes() and (read == data) == (name == "png")
        del frame, read
        # The file goes with the last reference; the loop's own (a finished thread's future) may outlive ours a turn.
        files = (kept, download)
        await wait_until(lambda files=files: gc.collect() >= 0 and not any(f.exists() for f in files), within=5)


async def test_a_refused_download_is_deleted_at_once(tmp_path: Path) -> None:
    download = tmp_path / "small.png"
    download.write_bytes(make_image(100, 100))
    with pytest.raises(ImageRejected):
        await images.check_first_frame_file(download)
    assert not download.exists()
