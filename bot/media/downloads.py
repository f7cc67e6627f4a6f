"""Fetching finished videos and members' images: streamed to a temporary file, capped in size."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import aiohttp

from bot.crashpoints import crash_point

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# What `generate` agrees to write for one video (a 15 s 1080p clip is tens of MB): a link serving more is wrong.
MAX_VIDEO_BYTES = 512 * 1024 * 1024


class VideoTooLarge(Exception):
    """The video is bigger than the cap; post a link instead."""

    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(f"video of {size if size is not None else 'unknown'} bytes exceeds {limit}")
        self.size = size
        self.limit = limit


class DownloadFailed(Exception):
    """The video could not be fetched (HTTP error, not a video, connection trouble)."""


async def download_video(
    session: aiohttp.ClientSession, url: str, destination: Path, *, max_bytes: int | None, time_limit: float = 300.0
) -> int:
    """Stream `url` into `destination` (written atomically); returns its size. Never holds the file in memory."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=".partial-", suffix=".mp4")
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=time_limit, sock_read=60)) as response:
                if response.status != 200:
                    raise DownloadFailed(f"the video link answered HTTP {response.status}")
                kind = response.headers.get("Content-Type", "")
                if kind.startswith(("text/", "application/json")):
                    raise DownloadFailed(f"the video link served {kind.split(';')[0]}, not a video")
                announced = response.content_length
                if max_bytes is not None and announced is not None and announced > max_bytes:
                    raise VideoTooLarge(announced, max_bytes)
                async for chunk in response.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise VideoTooLarge(None if announced is None else announced, max_bytes)
                    out.write(chunk)
                    crash_point("mid_download")
        if size == 0:
            raise DownloadFailed("the video link served an empty file")
        os.chmod(partial, 0o644)  # mkstemp makes it private; the video is an ordinary file for its owner
        os.replace(partial, destination)
    except TimeoutError:
        raise DownloadFailed("the video download timed out") from None
    except aiohttp.ClientError as exc:
        raise DownloadFailed(f"the video download failed: {type(exc).__name__}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # gone already when os.replace succeeded
    log.debug("downloaded %d bytes to %s", size, destination)
    return size


class ImageFetcher:
    """Members' images fetched from Discord's CDN: at most `limit` at once, each streamed to a temporary file
    under the size cap, so a burst of big attachments holds neither twenty downloads nor twenty images."""

    def __init__(self, session: aiohttp.ClientSession, *, limit: int) -> None:
        self.session = session
        self.slots = asyncio.Semaphore(limit)

    async def fetch(self, url: str, *, max_bytes: int) -> Path:
        """The image at `url` in a new temporary file (the caller's to delete). Raises `DownloadFailed`, or
        `VideoTooLarge` when it serves more than `max_bytes`."""
        handle, name = tempfile.mkstemp(prefix="attachment-", suffix=".img")
        os.close(handle)
        path = Path(name)
        try:
            async with self.slots:
                await download_video(self.session, url, path, max_bytes=max_bytes, time_limit=60.0)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return path
