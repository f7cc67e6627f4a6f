"""First-frame images: checked for real with Pillow and made into something the provider accepts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import os
import tempfile
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.core.i18n import english

T = TypeVar("T")
R = TypeVar("R")

ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})  # MPO: phones' multi-picture JPEGs
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # what we agree to read at all
MAX_SEND_BYTES = 10 * 1024 * 1024  # Kling's safe size for a first frame
MIN_SIDE = 300
MAX_RATIO = 2.5
MAX_PIXELS = 50_000_000  # above any phone photo (48-50 MP sensors); refused from the header alone
MAX_SIDE = 4096  # more than the provider needs: a longer side beyond it is downscaled
MAX_DECODE_PIXELS = MAX_SIDE * MAX_SIDE  # most pixels decoded at once (~67 MB as RGBA)
MAX_CONCURRENT_CHECKS = 2  # each check may hold ~100 MB of pixels at its peak
MAX_CONCURRENT_SENDS = 1  # a 10 MB frame in flight holds ~25 MB more; one at a time keeps a burst near 300 MB
MAX_FRAMES_IN_MEMORY = 2  # checked frames read back from their file at once (stored, sent)
PREVIEW_SIDE = 480  # the card's picture: a JPEG of a few tens of KB, not the member's 10 MB frame
BASE64_PIECE = 3 * 16 * 1024  # bytes encoded per call; a multiple of 3, so the pieces join into one valid text

_JPEG_SCALES = (1, 2, 4, 8)  # the reductions libjpeg can decode at directly
# One limit per event loop: an asyncio.Semaphore binds to the first loop that waits on it, and tests
# (or a restarted bot) run several loops in one process.
_check_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
_send_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
_memory_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
# One thread encodes every frame: the GIL lets only one encode run at a time anyway, and each thread that handles
# big buffers keeps its own malloc arena, so more threads would hold more memory after a burst.
_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="base64")


class ImageRejected(ValueError):
    """The image cannot be a first frame; the message tells the member what to change."""


@dataclass(frozen=True, slots=True, weakref_slot=True)
class FirstFrame:
    """An image ready to send: JPEG or PNG bytes within the provider's limits, in memory or in a temporary file."""

    content: bytes | Path  # a file is this frame's own: it is deleted when the frame is dropped
    mime: str
    width: int
    height: int
    converted_from: str | None  # the original format when we had to convert
    preview: bytes | None = None  # the card's small picture, made during the check (its decode is the costly part)

    def __post_init__(self) -> None:
        if isinstance(self.content, Path):
            weakref.finalize(self, _unlink, self.content)

    @property
    def data(self) -> bytes:
        """The bytes (read from the file each time: prefer `frame_bytes`, which bounds how many are held)."""
        return self.content if isinstance(self.content, bytes) else self.content.read_bytes()

    @property
    def base64(self) -> str:
        """Raw Base64 without a `data:` prefix, as the provider wants it."""
        return base64.b64encode(self.data).decode("ascii")


async def check_first_frame(data: bytes) -> FirstFrame:
    """prepare_first_frame in a worker thread, at most MAX_CONCURRENT_CHECKS at once across the bot."""
    return await _in_check_slot(prepare_first_frame, data)


async def _in_check_slot(work: Callable[[T], R], argument: T) -> R:
    """`work(argument)` in a worker thread, at most MAX_CONCURRENT_CHECKS at once (each may decode ~100 MB)."""
    slots = _check_slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(MAX_CONCURRENT_CHECKS))
    await slots.acquire()
    try:
        running = asyncio.ensure_future(asyncio.to_thread(work, argument))
    except BaseException:
        slots.release()
        raise
    # The slot is freed when the thread ends, not when the caller stops waiting: a cancelled
    # command must not let another decode start while its own still holds the memory.
    running.add_done_callback(lambda done: _free_check_slot(slots, done))
    return await asyncio.shield(running)


async def check_first_frame_file(path: Path) -> FirstFrame:
    """check_first_frame for a downloaded file, which becomes the frame's own (deleted with it, or now if refused).

    The checked frame stays on disk, so a burst of commands holds files, not tens of MB each, until sent."""
    try:
        return await _in_check_slot(_prepare_spilled, path)
    except BaseException:
        _unlink(path)
        raise


def _prepare_spilled(path: Path) -> FirstFrame:
    frame = prepare_first_frame(path.read_bytes())
    if frame.converted_from is None:  # sent as it is: the downloaded file is the frame, its card shows a preview
        return FirstFrame(path, frame.mime, frame.width, frame.height, None, _preview(path))
    handle, spilled = tempfile.mkstemp(prefix="frame-", suffix=".img")
    with os.fdopen(handle, "wb") as out:
        out.write(frame.data)
    _unlink(path)
    return FirstFrame(Path(spilled), frame.mime, frame.width, frame.height, frame.converted_from)


@contextlib.asynccontextmanager
async def frame_bytes(frame: FirstFrame) -> AsyncIterator[bytes]:
    """The frame's bytes for the block; a frame kept in a file is read back by at most MAX_FRAMES_IN_MEMORY at once."""
    if isinstance(frame.content, bytes):
        yield frame.content
        return
    slots = _memory_slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(MAX_FRAMES_IN_MEMORY))
    async with slots:
        yield await asyncio.to_thread(frame.content.read_bytes)


async def frame_base64(frame: FirstFrame) -> str:
    """The frame's raw Base64 (as `FirstFrame.base64`); its bytes are let go when this returns."""
    async with frame_bytes(frame) as data:
        return await base64_text(data)


async def card_preview(frame: FirstFrame) -> bytes:
    """A small JPEG of the frame for its card: made with the check, else now in a check slot (a PNG may be big)."""
    if frame.preview is not None:
        return frame.preview
    return await _in_check_slot(_preview, frame.content)


def _preview(content: bytes | Path) -> bytes:
    with Image.open(io.BytesIO(content) if isinstance(content, bytes) else content) as image:
        image.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))  # a JPEG decodes at reduced scale; others ignore it
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        upright = ImageOps.exif_transpose(image).convert("RGB")
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=80)
    return out.getvalue()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def send_slots() -> asyncio.Semaphore:
    """This loop's limit on first frames being encoded and sent at once; hold it (`async with`) around both."""
    return _send_slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(MAX_CONCURRENT_SENDS))


async def base64_text(data: bytes) -> str:
    """The raw Base64 of `data` (as `FirstFrame.base64`), encoded in the encoder thread."""
    return await asyncio.get_running_loop().run_in_executor(_encoder, encode_base64, data)


def encode_base64(data: bytes) -> str:
    """Raw Base64 encoded piece by piece; CPU-bound (~30 ms for 10 MB), run it in a thread."""
    # One b2a_base64 call over 10 MB holds the GIL throughout and so stalls the event loop even from a thread;
    # between small pieces the loop gets its turn.
    view, out = memoryview(data), bytearray()
    for start in range(0, len(view), BASE64_PIECE):
        out += binascii.b2a_base64(view[start : start + BASE64_PIECE], newline=False)
    return out.decode("ascii")


def _free_check_slot(slots: asyncio.Semaphore, work: asyncio.Future[Any]) -> None:
    slots.release()
    if not work.cancelled():
        work.exception()  # retrieved here so an abandoned check does not log "never retrieved"


def prepare_first_frame(data: bytes) -> FirstFrame:
    """Check an uploaded image and convert it to PNG or JPEG where needed; CPU-bound, run it in a thread.

    Sizes are checked from the header before any pixel is decoded, and a big JPEG is decoded at reduced scale.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageRejected(
            english(
                "The image is too large ({size}); send one under {limit}.",
                size=_mib(len(data)),
                limit=_mib(MAX_SEND_BYTES),
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
            fmt = image.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected(
                    english("That file is a {format} image; send a JPG, PNG or WebP picture.", format=fmt)
                )
            width, height = image.size
            _check_size(width, height, fmt)
            passthrough = fmt in ("JPEG", "PNG") and not getattr(image, "is_animated", False)
            passthrough = passthrough and len(data) <= MAX_SEND_BYTES and max(width, height) <= MAX_SIDE
            if fmt in ("JPEG", "MPO"):
                # libjpeg still reads every byte at reduced scale, so a truncated file fails all the same;
                # a JPEG sent as it is needs no full-size pixels at all.
                scale = _JPEG_SCALES[-1] if passthrough else _jpeg_scale(width, height)
                image.draft("RGB", (width // scale, height // scale))
            image.load()  # decodes, so a truncated file fails here, not at the provider
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected(english("The image has far too many pixels; send a smaller one.")) from None
        except ImageRejected:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageRejected(
                english("That file is not a readable image; send a JPG, PNG or WebP picture.")
            ) from None
    if passthrough:
        return FirstFrame(data, "image/jpeg" if fmt == "JPEG" else "image/png", width, height, None)
    return _convert(image, fmt)


def _check_size(width: int, height: int, fmt: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            english(
                "The image is {width}x{height} pixels ({pixels}), too many; send one under {limit}.",
                width=width,
                height=height,
                pixels=_mp(width * height),
                limit=_mp(MAX_PIXELS),
            )
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            english(
                "The image is {width}x{height}; each side must be at least {side} pixels.",
                width=width,
                height=height,
                side=MIN_SIDE,
            )
        )
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise ImageRejected(
            english(
                "The image is {width}x{height}, too elongated; its sides may differ by at most 1:{ratio}.",
                width=width,
                height=height,
                ratio=f"{MAX_RATIO:g}",
            )
        )
    # Only JPEG can be decoded at reduced scale; anything else is decoded whole, so its size is the memory.
    if fmt not in ("JPEG", "MPO") and width * height > MAX_DECODE_PIXELS:
        raise ImageRejected(
            english(
                "The image is {width}x{height} pixels ({pixels}); a PNG or WebP may have at most {limit}. "
                "Resize it to {side} pixels on its longer side, or send it as a JPG.",
                width=width,
                height=height,
                pixels=_mp(width * height),
                limit=_mp(MAX_DECODE_PIXELS),
                side=MAX_SIDE,
            )
        )


def _jpeg_scale(width: int, height: int) -> int:
    # The smallest reduction that fits the decode budget; MAX_PIXELS keeps it within 1/2 in practice.
    for scale in _JPEG_SCALES:
        if (width // scale) * (height // scale) <= MAX_DECODE_PIXELS:
            return scale
    return _JPEG_SCALES[-1]


def _convert(image: Image.Image, original: str) -> FirstFrame:
    # Keep transparency in PNG; photos go to JPEG, which stays far smaller.
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    # The EXIF orientation is lost on re-encoding, so turn the pixels upright first.
    ImageOps.exif_transpose(image, in_place=True)
    mode = "RGBA" if has_alpha else "RGB"
    if image.mode != mode:  # convert() copies even when nothing changes
        image = image.convert(mode)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if has_alpha:
        image.save(out, "PNG", optimize=True)
        mime = "image/png"
    else:
        image.save(out, "JPEG", quality=92)
        mime = "image/jpeg"
    if out.tell() > MAX_SEND_BYTES:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=80)
        mime = "image/jpeg"
    if out.tell() > MAX_SEND_BYTES:
        raise ImageRejected(f"The image is too large even compressed; send one under {_mib(MAX_SEND_BYTES)}.")
    return FirstFrame(out.getvalue(), mime, image.width, image.height, original)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def _mp(pixels: int) -> str:
    return english("{count} megapixels", count=f"{pixels / 1_000_000:.1f}")
