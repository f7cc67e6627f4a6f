"""A member's image as a job's first frame: read from Discord and checked for real (the /video image command and
the Animate image form)."""

from __future__ import annotations

from typing import Any

import discord

from bot.core.i18n import english
from bot.core.jobs import InvalidRequest
from bot.media.downloads import DownloadFailed, ImageFetcher, VideoTooLarge
from bot.media.images import MAX_UPLOAD_BYTES, ImageRejected, check_first_frame_file


async def read_first_frame(attachment: discord.Attachment, images: ImageFetcher) -> tuple[Any, str, str | None]:
    """Read an attachment and check it for real; returns the prepared frame, where it came from, and its Discord
    URL when the frame is the attachment as is (a gateway that refuses Base64 can fetch that)."""
    if attachment.size > MAX_UPLOAD_BYTES:
        raise InvalidRequest(
            english(
                "{name} is {size} MB; send an image under {limit} MB.",
                name=attachment.filename,
                size=f"{attachment.size / 1024 / 1024:.1f}",
                limit=MAX_UPLOAD_BYTES // 1024 // 1024,
            )
        )
    try:
        path = await images.fetch(attachment.url, max_bytes=MAX_UPLOAD_BYTES)  # a few at once, streamed to a file
    except (DownloadFailed, VideoTooLarge):
        raise InvalidRequest(
            english("The image could not be downloaded from Discord; try uploading it again.")
        ) from None
    try:
        frame = await check_first_frame_file(path)
    except ImageRejected as exc:
        raise InvalidRequest(str(exc)) from None
    return frame, attachment.filename, attachment.url if frame.converted_from is None else None
