"""Posting finished videos into their threads: the file when it fits and may be attached, else a link.

Deliveries run as background tasks (`DeliveryWorker`), so one slow download or post never holds up the others. Each
delivers a job this process claimed, renewing the claim while it runs: a renewal that finds the claim lost stops the
delivery, and right before the post a fenced check confirms (and extends) the claim, else nothing is posted. A job
whose earlier deliverer may have posted (it stopped holding the job, or its try failed) is first looked for in its
thread, so it is posted once."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.app import LANE, Lane
from bot.core.i18n import english, tr
from bot.core.model import Job
from bot.crashpoints import crash_point
from bot.media.downloads import DownloadFailed, VideoTooLarge, download_video
from cogs.messages import (
    NO_ATTACH_REASON,
    THREAD_GONE_NOTE,
    failure_text,
    jump_link,
    result_embed,
    too_large_reason,
    video_link_text,
)
from cogs.views import result_view, review_view

if TYPE_CHECKING:
    from bot.app import VideoBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit since 2025
MAX_TRIES = 3
DELIVERY_SECONDS = 300.0  # the download, and then the post, each at most: a stalled CDN or Discord must not hang
# Deliveries at once: enough to keep the pace's video lane fed in a flood (each spends a tenth of a second or more
# outside the pace: its download, the database, the upload), so the videos take every free turn before the card
# edits. Each holds its video in a temporary file of at most the upload limit while it runs.
PARALLEL_DELIVERIES = 12
# A job's card is posted right after it is submitted; give the command that long before posting without it.
CARD_GRACE_SECONDS = 120.0
RECENT_MESSAGES = 50  # how far back a thread is searched for a post an earlier deliverer may have made
REVIEW_INTRO = english(
    "🔎 Video `{job}` by <@{user}> waits for review: {link}\nApprove posts it in its thread; Reject tells "
    "the member your reason. Either way its credits are spent."
)
PRIVATE_REVIEW_INTRO = english(
    "🔒 Private video `{job}` by <@{user}> waits for review: {link}\nApprove sends it to the member by direct "
    "message; Reject tells them your reason. Either way its credits are spent."
)


class ClaimLost(Exception):
    """This process no longer holds the job's claim (another took it over): it must not post the video."""


def post_nonce(job_id: str) -> str:
    """The message nonce of a job's video post (Discord allows 25 characters)."""
    return f"kv{job_id}"


def carries_job(message: discord.Message, job_id: str) -> bool:
    """Whether a message is a job's video post: its nonce, or the buttons only that post has (their custom ids
    carry the job id; a channel's history does not always show nonces)."""
    if message.nonce is not None and str(message.nonce) == post_nonce(job_id):
        return True
    shown = {getattr(item, "custom_id", None) for row in message.components for item in getattr(row, "children", ())}
    return bool(shown & {getattr(item, "custom_id", None) for item in result_view(job_id).children} - {None})


class Deliverer:
    """Takes `succeeded` jobs to `delivered` (or `undeliverable`, or `failed` when the video never came)."""

    def __init__(self, bot: VideoBot, *, time_limit: float = DELIVERY_SECONDS) -> None:
        self.bot = bot
        self.jobs = bot.resources.jobs
        self.session = bot.resources.session
        self.started_at = time.time()
        self.time_limit = time_limit

    def card_pending(self, job: Job) -> bool:
        """True while the command that made the job may still be posting its card (it shows the job then).

        A job from before a restart never gets one, so it is not waited for."""
        return (
            job.message_id is None
            and not job.private  # a private job has no card: nothing to wait for
            and job.created_at > self.started_at
            and time.time() - job.created_at < CARD_GRACE_SECONDS
        )

    def upload_limit(self, job: Job) -> int:
        """The interaction's limit recorded with the job, else the server's, else Discord's default."""
        if job.attachment_size_limit:
            return job.attachment_size_limit
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild else DEFAULT_UPLOAD_LIMIT

    def can_attach(self, job: Job, channel_id: int) -> bool:
        """Whether the bot may attach files in this channel or thread, from the cache; unknown counts as allowed."""
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        if guild is None:
            return True
        channel = guild.get_channel_or_thread(channel_id)
        if channel is None and channel_id == job.thread_id and job.channel_id:
            channel = guild.get_channel(job.channel_id)  # a thread has its parent channel's permissions
        if channel is None:
            return True
        try:
            return channel.permissions_for(guild.me).attach_files
        except discord.ClientException:  # a thread whose parent is not cached
            return True

    async def deliver(self, job: Job, *, resumed: bool = False) -> None:
        """Fetch and post one finished video, each within `time_limit`; every failure is counted, logged, bounded.

        `resumed`: an earlier deliverer may have posted it; a post found in the thread is recorded, not repeated."""
        if job.video_url is None or job.channel_id is None or self.card_pending(job):
            return
        if await self.awaits_review(job):
            return
        if resumed and (posted := await self.find_post(job)) is not None:
            log.info("job %s: its video was already posted (message %s); recording it, not posting again", job.id,
                     posted.id)  # fmt: skip
            await self._delivered(job, posted)
            return
        crash_point("before_post")
        limit = self.upload_limit(job)
        if not self.can_attach(job, job.thread_id or job.channel_id):
            log.info("job %s: no Attach Files permission in its thread; posting the link", job.id)
            await self._post_in_time(job, None, NO_ATTACH_REASON)
            return
        with tempfile.TemporaryDirectory(prefix="video-") as folder:
            path = Path(folder) / f"{job.id}.mp4"
            try:
                await download_video(self.session, job.video_url, path, max_bytes=limit, time_limit=self.time_limit)
            except VideoTooLarge:
                await self._post_in_time(job, None, too_large_reason(limit))
                return
            except DownloadFailed as exc:
                await self._download_failed(job, str(exc))
                return
            await self._post_in_time(job, path, too_large_reason(limit))

    async def _post_in_time(self, job: Job, path: Path | None, link_reason: str) -> None:
        """Post within `time_limit`, Discord's own retries (5xx, rate limits) included. The post (and the DM that
        tells the member of it) takes the pace's video lane: it goes before the card and status edits waiting."""
        lane = LANE.set(Lane.VIDEO)
        try:
            async with asyncio.timeout(self.time_limit):
                await self._post(job, path, link_reason)
        except TimeoutError:
            await self._timed_out(job)
        finally:
            LANE.reset(lane)

    async def _post(self, job: Job, path: Path | None, link_reason: str) -> None:
        """Post in the job's thread; when the thread was deleted, in its channel instead. A private job goes by DM."""
        assert job.channel_id is not None
        if job.private:
            await self._post_private(job, path, link_reason)
            return
        try:
            message = await self._send(job, job.thread_id or job.channel_id, path, link_reason)
        except discord.NotFound as exc:
            if job.thread_id is None:
                await self._post_failed(job, exc)
            else:
                await self._post_in_channel(job, path, link_reason)
            return
        except discord.HTTPException as exc:
            await self._post_failed(job, exc)
            return
        await self._delivered(job, message)

    async def _post_private(self, job: Job, path: Path | None, link_reason: str) -> None:
        """A private video goes by DM with its buttons. A closed DM (Discord 50007): as an ephemeral follow-up
        while the command's token lives, else it reaches no one now (`delivered_via` 'none'): the member is told
        at their next command and finds it in /video status and /video history. Nothing public either way."""
        assert job.user_id is not None
        try:
            dm = await self.bot.create_dm(discord.Object(job.user_id))
            message = await self._send(job, dm.id, path, link_reason, target=dm)
        except discord.HTTPException as exc:
            if exc.code != 50007:
                await self._post_failed(job, exc)
                return
            log.info("job %s: its member's DMs are closed", job.id)
            if job.followup_token and (job.followup_until or 0) > time.time():
                try:
                    message = await self._send(job, 0, path, link_reason, target=self._followup(job.followup_token))
                except discord.HTTPException as followup_error:
                    log.info("job %s: the follow-up was refused too: %s", job.id, followup_error)
                else:
                    await self._delivered(job, message, via="followup")
                    return
            await self.jobs.mark_unreached(job.id, lease=self.jobs.lease_of(job))
            log.info("job %s: reached no one; its member is told at their next command", job.id)
            return
        await self._delivered(job, message, via="dm")

    def _followup(self, token: str) -> discord.Webhook:
        """The command's follow-up webhook (its answers are ephemeral)."""
        assert self.bot.application_id is not None
        webhook = discord.Webhook.partial(self.bot.application_id, token, client=self.bot)
        webhook.type = discord.WebhookType.application  # an interaction's webhook: ephemeral messages allowed
        return webhook

    async def _post_in_channel(self, job: Job, path: Path | None, link_reason: str) -> None:
        """The thread is gone: post in the job's channel, saying so; if that fails too, the job is undeliverable."""
        assert job.channel_id is not None
        log.info("job %s: its thread %s was deleted; posting the video in the channel", job.id, job.thread_id)
        if path is not None and not self.can_attach(job, job.channel_id):
            path, link_reason = None, NO_ATTACH_REASON
        try:
            message = await self._send(job, job.channel_id, path, link_reason, note=THREAD_GONE_NOTE)
        except discord.HTTPException as exc:
            reason = english(
                "Its thread was deleted and the channel refused the post: {error}",
                error=f"{exc.status} {exc.text or ''}".strip(),
            )
            if await self.jobs.mark_undeliverable(job.id, reason, lease=self.jobs.lease_of(job)):
                log.error("job %s is undeliverable; its link stays in /video status and /video history", job.id)
            return
        # The job now lives in its channel: the card links there, and no status edit goes to the dead thread.
        await self.jobs.set_discord_refs(job.id, message_id=job.message_id, thread_id=None, status_message_id=None)
        await self._delivered(job, message)

    async def _send(
        self,
        job: Job,
        channel_id: int,
        path: Path | None,
        link_reason: str,
        *,
        note: str = "",
        target: discord.abc.Messageable | discord.Webhook | None = None,
    ) -> discord.Message:
        """Post the file, or the link when there is no file or Discord refuses the file (too large, not allowed).
        `target`: where instead of the channel (a private job's DM or follow-up webhook)."""
        where = target or self.bot.get_partial_messageable(channel_id, guild_id=job.guild_id)
        ping = not job.private and await self.notify_mode(job) == "mention"  # 'dm' and 'off' ping no one
        mention = f"<@{job.user_id}>" if ping else ""
        pings = requester_only(job) if ping else discord.AllowedMentions.none()
        # The nonce makes Discord answer a repeated post with the first message (discord.py sends enforce_nonce
        # with it), so a repeat within minutes of a crash between the post and the database update posts nothing.
        nonce = post_nonce(job.id)
        if path is not None:
            try:
                await self._fence(job)
                message = await self._send_to(
                    where,
                    tr(job.locale, "{mention} your video is ready.", mention=mention).strip()
                    + (f"\n{tr(job.locale, note)}" if note else ""),
                    embed=result_embed(job),
                    file=discord.File(path, filename=f"video-{job.id[:8]}.mp4"),
                    view=self.result_view(job),
                    allowed_mentions=pings,
                    nonce=nonce,
                )
                crash_point("after_post")
                return message
            except discord.HTTPException as exc:
                if exc.status == 413:
                    log.info("job %s: Discord refused the file as too large; posting the link", job.id)
                    link_reason = too_large_reason(self.upload_limit(job))
                elif exc.status == 403 and exc.code == 50013:
                    # Counted, as a refused post; the link needs no Attach Files, so it goes at once.
                    await self.jobs.note_delivery_problem(
                        await self._fresh(job),
                        english("Discord refused the file: {error}", error=exc),
                        lease=self.jobs.lease_of(job),
                    )
                    log.info("job %s: Discord refused the file (missing permissions); posting the link", job.id)
                    link_reason = NO_ATTACH_REASON
                else:
                    raise
        await self._fence(job)
        message = await self._send_to(
            where,
            video_link_text(job, mention, link_reason, note),
            embed=result_embed(job),
            view=self.result_view(job),
            allowed_mentions=pings,
            nonce=nonce,
        )
        crash_point("after_post")
        return message

    @staticmethod
    async def _send_to(
        where: discord.abc.Messageable | discord.Webhook, content: str, **kwargs: Any
    ) -> discord.Message:
        """A channel's send, or a follow-up webhook's (ephemeral, and it has no nonce)."""
        if isinstance(where, discord.Webhook):
            kwargs.pop("nonce", None)
            return await where.send(content, ephemeral=True, wait=True, **kwargs)
        return await where.send(content, **kwargs)

    async def _fence(self, job: Job) -> None:
        """Right before a post: confirm this process still holds the job's claim under the same attempt (extending
        it), so a deliverer that paused past its lease, and was taken over, posts nothing."""
        if not await self.jobs.renew(job):
            raise ClaimLost(job.id)

    def result_view(self, job: Job) -> discord.ui.View:
        """The buttons under the video, with what Re-roll and Continue (at the default duration) cost."""
        return result_view(
            job.id,
            reroll_cost=self.jobs.cost_of(job.duration, job.resolution, job.sound),
            continue_cost=self.jobs.cost_of(self.bot.settings.default_duration, job.resolution, job.sound),
            chained=job.parent_id is not None,
            locale=job.locale,
        )

    async def _delivered(self, job: Job, message: discord.Message, *, via: str | None = None) -> None:
        # Shielded: once posted, a shutdown's cancel must not lose the record (the nonce would catch a repeat, but
        # only for a few minutes). Fenced: a deliverer that lost its claim leaves the job to the one holding it.
        lease = self.jobs.lease_of(job)
        marked = self.jobs.mark_delivered(job.id, result_message_id=message.id, lease=lease, via=via)
        if not await asyncio.shield(marked):
            log.warning("job %s: posted, but it was delivered or claimed elsewhere meanwhile", job.id)
            return
        log.info("job %s delivered (%s)", job.id, "file" if message.attachments else "link")
        if job.private:
            return  # the DM or the follow-up was the member's notice
        link = jump_link(job.guild_id, message.channel.id, message.id)
        await self.notify_requester(
            job,
            tr(job.locale, "Your video `{job}` is ready: {link}", job=job.id[:8], link=link),
            tr(job.locale, "your video is ready (above)."),
            message.channel.id,
        )

    async def find_post(self, job: Job) -> discord.Message | None:
        """The job's video message among the latest of its thread (and channel), if an earlier try posted it."""
        me = self.bot.user
        for channel in await self._posted_in(job):
            try:
                async for message in channel.history(limit=RECENT_MESSAGES):
                    if me is not None and message.author.id == me.id and carries_job(message, job.id):
                        return message
            except discord.HTTPException as exc:  # a deleted thread, no Read Message History: look elsewhere
                log.info("job %s: could not read channel %s for an earlier post: %s", job.id, channel.id, exc)
        return None

    async def _posted_in(self, job: Job) -> list[discord.PartialMessageable | discord.DMChannel]:
        """Where an earlier try may have posted the job's video: its thread and channel; a private job's, its
        member's DM (an ephemeral follow-up cannot be looked up: it is sent only while the DM is closed)."""
        if job.private:
            assert job.user_id is not None
            try:
                return [await self.bot.create_dm(discord.Object(job.user_id))]
            except discord.HTTPException as exc:
                log.info("job %s: no DM channel to look for an earlier post: %s", job.id, exc)
                return []
        ids = dict.fromkeys(c for c in (job.thread_id, job.channel_id) if c)
        return [self.bot.get_partial_messageable(c, guild_id=job.guild_id) for c in ids]

    async def _fresh(self, job: Job) -> Job:
        """The job as stored now (its try count may have moved during this delivery)."""
        return await self.jobs.get(job.id) or job

    async def _timed_out(self, job: Job) -> None:
        seconds = f"{self.time_limit:g}"
        reason = english("posting it took longer than {seconds} s", seconds=seconds)
        lease = self.jobs.lease_of(job)
        tries = await self.jobs.note_delivery_problem(await self._fresh(job), reason, lease=lease)
        log.warning("job %s: post try %d timed out", job.id, tries)
        if tries < MAX_TRIES:
            return  # the next tick tries again
        if await self.jobs.mark_undeliverable(
            job.id,
            english("The video could not be posted: posting it took longer than {seconds} s.", seconds=seconds),
            lease=lease,
        ):
            log.error("job %s is undeliverable; its link stays in /video status and /video history", job.id)

    async def _download_failed(self, job: Job, reason: str) -> None:
        tries = await self.jobs.note_delivery_problem(job, reason)
        log.warning("job %s: download try %d failed: %s", job.id, tries, reason)
        if tries < MAX_TRIES:
            return
        await self.jobs.fail_download(job, reason)  # the poller announces the failure

    async def _post_failed(self, job: Job, error: discord.HTTPException) -> None:
        reason = english(
            "Discord refused the post: {error}", error=f"{error.status} {error.text or type(error).__name__}"
        )
        gone = isinstance(error, discord.NotFound)  # the channel was deleted: retrying cannot help
        lease = self.jobs.lease_of(job)
        tries = (
            MAX_TRIES if gone else await self.jobs.note_delivery_problem(await self._fresh(job), reason, lease=lease)
        )
        log.warning("job %s: post try %d failed: %s", job.id, tries, reason)
        if tries < MAX_TRIES:
            return
        if await self.jobs.mark_undeliverable(job.id, reason, lease=lease):
            log.error("job %s is undeliverable; its link stays in /video status and /video history", job.id)

    async def tell_failure(self, job: Job) -> None:
        """Post a failed job's reason in its thread, telling the member as they chose."""
        await self._tell(
            job,
            lambda ping: failure_text(job, mention=ping),
            english("Your video `{job}` could not be made: {link}"),
            english("your video could not be made (see above)."),
        )

    # --- telling the member -------------------------------------------------------------------------------

    async def notify_mode(self, job: Job) -> str:
        """How the requester wants to hear that the job ended: 'mention', 'dm' or 'off' (nobody to tell: off)."""
        return await self.jobs.notify_preference(job.user_id) if job.user_id else "off"

    async def notify_requester(self, job: Job, dm_text: str, fallback: str, channel_id: int) -> None:
        """After a post that did not ping the member: a direct message when they chose 'dm'. A closed DM (Discord
        50007) or any refusal falls back to a mention in `channel_id`, pinging only them."""
        if job.user_id is None or await self.notify_mode(job) != "dm":
            return
        try:
            channel = await self.bot.create_dm(discord.Object(job.user_id))
            await channel.send(dm_text, allowed_mentions=discord.AllowedMentions.none())
            return
        except discord.HTTPException as exc:
            log.info("job %s: no direct message to its member (%s %s); mentioning them", job.id, exc.status, exc.code)
        target = self.bot.get_partial_messageable(channel_id, guild_id=job.guild_id)
        try:
            await target.send(f"<@{job.user_id}> {fallback}", allowed_mentions=requester_only(job))
        except discord.HTTPException:
            log.warning("job %s: could not mention its member either", job.id, exc_info=True)

    async def tell_rejected(self, job: Job) -> None:
        """Tell the member in the job's thread that a moderator rejected the video, with the reason; the credits
        stay spent (the video service billed the render)."""
        text = tr(
            job.locale,
            "Your video `{job}` was not approved by a moderator: {reason}\n"
            "Its credits stay spent: the video service billed the render.",
            job=job.id[:8],
            reason=discord.utils.escape_markdown(job.review_reason or "") or tr(job.locale, "no reason given"),
        )
        await self._tell(
            job,
            lambda ping: f"<@{job.user_id}> {text}" if ping else text,
            english("Your video `{job}` was not approved: {link}"),
            english("your video was not approved (see above)."),
        )

    async def _tell(self, job: Job, text: Callable[[bool], str], dm_text: str, fallback: str) -> None:
        """Post `text(ping)` in the job's thread, pinging only the requester if they chose mentions, then a direct
        message (`dm_text`, with the thread's link) if they chose that; a Discord error is only logged."""
        if job.private:  # nothing public: the end is told by DM only
            await self._tell_by_dm(job, text(False))
            return
        if job.channel_id is None:
            return
        where = job.thread_id or job.channel_id
        target = self.bot.get_partial_messageable(where, guild_id=job.guild_id)
        ping = await self.notify_mode(job) == "mention"
        try:
            await target.send(
                text(ping), allowed_mentions=requester_only(job) if ping else discord.AllowedMentions.none()
            )
        except discord.HTTPException:
            log.warning("job %s: could not post its end in its thread", job.id, exc_info=True)
        link = jump_link(job.guild_id, where)
        await self.notify_requester(
            job, tr(job.locale, dm_text, job=job.id[:8], link=link), tr(job.locale, fallback), where
        )

    async def _tell_by_dm(self, job: Job, text: str) -> None:
        if job.user_id is None:
            return
        try:
            channel = await self.bot.create_dm(discord.Object(job.user_id))
            await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.info("job %s: could not tell its member by DM (%s %s)", job.id, exc.status, exc.code)

    # --- moderator review ---------------------------------------------------------------------------------

    async def awaits_review(self, job: Job) -> bool:
        """True while the video must wait for a moderator. In a server with a review channel it goes there first,
        with Approve and Reject; it is marked 'pending' BEFORE that post, so nothing (a restart, another tick)
        delivers it to the member until a moderator approves."""
        if job.review_state is None:
            if await self.review_channel(job) is None:
                return False
            job = await self.jobs.hold_for_review(job)
        if job.review_state != "pending":
            return False  # approved: delivered as usual
        if job.review_message_id is not None:
            return True  # its buttons decide
        channel_id = await self.review_channel(job)
        if channel_id is None:  # review was turned off before its message could be posted: it goes out
            return not await self.jobs.approve(job.id)
        await self._post_for_review(job, channel_id)
        return True

    async def review_channel(self, job: Job) -> int | None:
        """The review channel of the job's server, if its moderators set one."""
        if job.guild_id is None:
            return None
        return (await self.bot.resources.credits.settings(job.guild_id)).review_channel_id

    async def _post_for_review(self, job: Job, channel_id: int) -> None:
        """The video's link and prompt in the review channel (the prompt never pings), with the buttons. A private
        video's shows its link but not its prompt: the moderators judge the video, and the channel may be seen by
        more than they are."""
        locale = self.bot.server_locale(job.guild_id)
        text = tr(
            locale,
            PRIVATE_REVIEW_INTRO if job.private else REVIEW_INTRO,
            job=job.id[:8],
            user=job.user_id,
            link=job.video_url,
        )
        target = self.bot.get_partial_messageable(channel_id, guild_id=job.guild_id)
        try:
            message = await target.send(
                text,
                embeds=[] if job.private else [result_embed(job)],  # a private video's prompt stays private
                view=review_view(job.id, locale),
                allowed_mentions=discord.AllowedMentions.none(),
                nonce=f"kr{job.id}",  # a repeat after a crash returns the first message
            )
        except discord.HTTPException as exc:
            reason = english(
                "the review channel refused the post: {error}", error=f"{exc.status} {exc.text or ''}".strip()
            )
            tries = await self.jobs.note_delivery_problem(await self._fresh(job), reason)
            log.warning("job %s: review post try %d failed: %s", job.id, tries, reason)
            if tries == MAX_TRIES:  # it stays pending and is tried again each tick; say so once
                await self.bot.post_log(
                    job.guild_id,
                    tr(locale, "⚠️ video `{job}` waits for review, but {reason}", job=job.id[:8], reason=reason),
                )
            return
        await self.jobs.set_review_message(job.id, message.id)
        log.info("job %s: waiting for review in channel %s", job.id, channel_id)
        if job.status_message_id is not None:  # the member sees why the video is not there yet
            where = self.bot.get_partial_messageable(job.thread_id or job.channel_id or 0, guild_id=job.guild_id)
            try:
                await where.get_partial_message(job.status_message_id).edit(
                    content=tr(job.locale, "🔎 **Done**: a moderator reviews the video before it is posted here."),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
            except discord.HTTPException as exc:
                log.info("job %s: status edit failed: %s", job.id, exc)


def requester_only(job: Job) -> discord.AllowedMentions:
    """Pings the job's requester and nobody else (whatever the rest of the text holds)."""
    users = [discord.Object(job.user_id)] if job.user_id else False
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=False)


class DeliveryWorker:
    """Delivers finished jobs in the background: one task per job, at most `parallel` at once.

    The poll tick and callback hints only `schedule` the jobs they claimed (as many as there is room for, so the
    rest stay free for other processes); nothing waits for a delivery but the shutdown."""

    def __init__(
        self, deliverer: Deliverer, on_done: Callable[[str], Awaitable[None]], *, parallel: int = PARALLEL_DELIVERIES
    ) -> None:
        self.deliverer = deliverer
        self.on_done = on_done  # called with the job id after each try (it announces a change of state)
        self.running: dict[str, asyncio.Task[None]] = {}  # the delivery of each job, by job id
        self.finishing: set[asyncio.Task[None]] = set()  # tasks past their delivery (announcing it), until they end
        self.parallel = parallel
        self.limit = asyncio.Semaphore(parallel)
        self.closed = False
        self.started = 0  # deliveries started, for operators' debugging and for tests that count them

    def room(self) -> int:
        """How many more deliveries may start now (one only announcing its end no longer counts)."""
        delivering = sum(1 for task in self.running.values() if task not in self.finishing)
        return 0 if self.closed else max(0, self.parallel - delivering)

    def schedule(self, job: Job, *, resumed: bool = False) -> bool:
        """Start delivering `job` (claimed by this process) unless it is being delivered already; True when a
        delivery was started. `resumed` as in `Deliverer.deliver`."""
        current = self.running.get(job.id)
        if self.closed or (current is not None and current not in self.finishing):
            return False  # being delivered here already
        task = asyncio.get_running_loop().create_task(self._run(job, resumed), name=f"deliver-{job.id[:8]}")
        self.running[job.id] = task
        self.started += 1
        task.add_done_callback(lambda done: self._forget(job.id, done))
        return True

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        self.finishing.discard(task)
        if self.running.get(job_id) is task:
            del self.running[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: delivery task failed", job_id, exc_info=task.exception())

    async def _run(self, claimed: Job, resumed: bool) -> None:
        LANE.set(Lane.BACKGROUND)  # a delivery's requests give way to the ones members wait on
        jobs = self.deliverer.jobs
        try:
            async with self.limit:
                # Read again: the claim may be stale (a delivery that just ended may have moved the job).
                job = await jobs.get(claimed.id)
                if job is None or job.status != "succeeded" or jobs.lease_of(job) != jobs.lease_of(claimed):
                    return
                await self._deliver_under_claim(job, resumed)
        finally:
            await jobs.release_claims([claimed])
        task = asyncio.current_task()
        if task is not None:
            self.finishing.add(task)  # its slot is free for what `on_done` starts; shutdown still waits for it
        await self.on_done(claimed.id)

    async def _deliver_under_claim(self, job: Job, resumed: bool) -> None:
        """Deliver `job` while renewing its claim; a renewal that finds the claim lost cancels the delivery."""
        loop = asyncio.get_running_loop()
        delivering = loop.create_task(self.deliverer.deliver(job, resumed=resumed), name=f"post-{job.id[:8]}")
        renewing = loop.create_task(self._renew(job, delivering))
        try:
            await delivering  # a cancel of this task (shutdown) cancels the delivery with it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            log.warning("job %s: its delivery claim was lost; stopped before posting, left to its new holder", job.id)
        except ClaimLost:
            log.warning("job %s: its delivery claim was lost; not posting, left to its new holder", job.id)
        except Exception:
            log.exception("job %s: delivery failed unexpectedly", job.id)
        finally:
            renewing.cancel()

    async def _renew(self, job: Job, delivering: asyncio.Task[None]) -> None:
        """Keep the claim on a job while its download and upload run (they may take minutes); once it is found
        lost (this process paused past its lease and another took the job), stop the delivery."""
        jobs = self.deliverer.jobs
        while True:
            await asyncio.sleep(jobs.lease_seconds / 3)
            try:
                if not await jobs.renew(job):
                    delivering.cancel()
                    return
            except Exception:
                log.exception("job %s: renewing its delivery claim failed; trying again", job.id)

    async def stop(self, grace: float) -> None:
        """Take no more jobs; give running deliveries `grace` seconds, then cancel them (their jobs stay
        `succeeded`, so they are delivered after a restart)."""
        self.closed = True
        tasks = [*self.running.values(), *self.finishing]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning("cancelling %d deliveries still running after %.0f s", len(pending), grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
