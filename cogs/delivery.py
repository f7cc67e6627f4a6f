"""Posting finished videos into their threads: the file when it fits, a link when it does not."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.crashpoints import crash_point
from bot.delivery import DownloadFailed, VideoTooLarge, download_video
from bot.store import Job
from cogs.messages import failure_text, result_embed
from cogs.views import result_view

if TYPE_CHECKING:
    from bot.app import VideoBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit since 2025
MAX_TRIES = 3
# A job's card is posted right after it is submitted; give the command that long before posting without it.
CARD_GRACE_SECONDS = 120.0


class Deliverer:
    """Takes `succeeded` jobs to `delivered` (or `undeliverable`, or `failed` when the video never came)."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs = bot.resources.jobs
        self.session = bot.resources.session
        self.started_at = time.time()

    def card_pending(self, job: Job) -> bool:
        """True while the command that made the job may still be posting its card (it shows the job then).

        A job from before a restart never gets one, so it is not waited for."""
        return (
            job.message_id is None
            and job.created_at > self.started_at
            and time.time() - job.created_at < CARD_GRACE_SECONDS
        )

    def upload_limit(self, job: Job) -> int:
        """The interaction's limit recorded with the job, else the server's, else Discord's default."""
        if job.attachment_size_limit:
            return job.attachment_size_limit
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild else DEFAULT_UPLOAD_LIMIT

    async def deliver(self, job: Job) -> None:
        """Fetch and post one finished video; every failure is counted, logged and bounded."""
        if job.video_url is None or job.channel_id is None or self.card_pending(job):
            return
        crash_point("before_post")
        target = self.bot.get_partial_messageable(job.thread_id or job.channel_id, guild_id=job.guild_id)
        limit = self.upload_limit(job)
        with tempfile.TemporaryDirectory(prefix="video-") as folder:
            path = Path(folder) / f"{job.id}.mp4"
            try:
                await download_video(self.session, job.video_url, path, max_bytes=limit)
            except VideoTooLarge:
                await self._post(job, target, None, limit)
                return
            except DownloadFailed as exc:
                await self._download_failed(job, str(exc))
                return
            await self._post(job, target, path, limit)

    async def _post(self, job: Job, target: discord.PartialMessageable, path: Path | None, limit: int) -> None:
        mention = f"<@{job.user_id}>" if job.user_id else ""
        pings = discord.AllowedMentions(users=[discord.Object(job.user_id)] if job.user_id else False)
        # The nonce makes Discord answer a repeated post with the first message (enforce_nonce), so a crash
        # between the post and the database update cannot post the video twice.
        nonce = f"kv{job.id}"
        try:
            if path is not None:
                message = await target.send(
                    f"{mention} your video is ready.",
                    embed=result_embed(job),
                    file=discord.File(path, filename=f"video-{job.id[:8]}.mp4"),
                    view=result_view(job.id),
                    allowed_mentions=pings,
                    nonce=nonce,
                )
            else:
                message = await target.send(
                    self._link_text(job, mention, limit),
                    embed=result_embed(job),
                    view=result_view(job.id),
                    allowed_mentions=pings,
                    nonce=nonce,
                )
            crash_point("after_post")
        except discord.HTTPException as exc:
            if path is not None and exc.status == 413:
                log.info("job %s: Discord refused the file as too large; posting the link", job.id)
                await self._post(job, target, None, limit)
                return
            await self._post_failed(job, exc)
            return
        await self.jobs.mark_delivered(job.id, result_message_id=message.id)
        log.info("job %s delivered (%s)", job.id, "file" if path else "link")

    @staticmethod
    def _link_text(job: Job, mention: str, limit: int) -> str:
        return (
            f"{mention} your video is ready, but it is larger than this server's {limit / 1024 / 1024:.0f} MB "
            f"upload limit, so here is its link: {job.video_url}\n"
            "The link expires (within a day or so): download the video soon."
        )

    async def _download_failed(self, job: Job, reason: str) -> None:
        tries = await self.jobs.note_delivery_problem(job, reason)
        log.warning("job %s: download try %d failed: %s", job.id, tries, reason)
        if tries < MAX_TRIES:
            return
        await self.jobs.fail_download(job, reason)  # the poller announces the failure

    async def _post_failed(self, job: Job, error: discord.HTTPException) -> None:
        reason = f"Discord refused the post: {error.status} {error.text or type(error).__name__}"
        gone = isinstance(error, discord.NotFound)  # the thread or channel was deleted: retrying cannot help
        tries = MAX_TRIES if gone else await self.jobs.note_delivery_problem(job, reason)
        log.warning("job %s: post try %d failed: %s", job.id, tries, reason)
        if tries < MAX_TRIES:
            return
        if await self.jobs.mark_undeliverable(job.id, reason):
            log.error("job %s is undeliverable; its link stays in /video status and /video history", job.id)

    async def tell_failure(self, job: Job) -> None:
        """Post a failed job's reason in its thread, notifying the member; a Discord error is only logged."""
        if job.channel_id is None:
            return
        target = self.bot.get_partial_messageable(job.thread_id or job.channel_id, guild_id=job.guild_id)
        pings = discord.AllowedMentions(users=[discord.Object(job.user_id)] if job.user_id else False)
        try:
            await target.send(failure_text(job), allowed_mentions=pings)
        except discord.HTTPException:
            log.warning("job %s: could not post its failure", job.id, exc_info=True)
