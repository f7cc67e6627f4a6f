"""Making videos: the Animate image menu, the requests of /video text and /video image and of the forms, and
`start_job`, which reserves a job and posts its card and thread (the commands themselves are in `cogs/video.py`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import (
    IN_SERVERS_AND_DMS,
    LANE,
    STOPPING,
    Lane,
    UserFacingError,
    VideoBot,
    outside_the_bot,
    quota_scope,
    refused_here,
)
from bot.core.credits import PERSONAL, QuotaRefused
from bot.core.i18n import english, tr, translated
from bot.core.jobs import InvalidRequest, JobRequest, JobService, ServiceUnavailable, SubmitRefused
from bot.core.model import DuplicateRequest, Job
from bot.core.options import OPTIONS, with_defaults
from bot.core.quota import format_credits
from bot.media import clips
from bot.media.downloads import MAX_VIDEO_BYTES, DownloadFailed, VideoTooLarge, download_video
from bot.media.images import FirstFrame, ImageRejected, card_preview, check_first_frame
from cogs.forms import ALREADY_ANSWERED, AnimateModal, ConfirmView, WaitView
from cogs.frames import read_first_frame
from cogs.messages import frame_filename, job_card, options_line, refusal_text, status_line, thread_name
from cogs.quota_commands import member_roles

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NO_THREAD_NOTE = english("A thread could not be started here, so this job's updates follow in this channel.")
CARD_REFUSED_AFTER_ANSWER = english(
    "I could not post this video's card in that channel, so the video was not made and its credits were released. "
    "Try again."
)
SOUND_DROPPED_NOTE = english(
    "🔇 This video service offers no sound control, so your sound choice was not sent; you are charged as for a "
    "silent video."
)

FOLLOWUP_SECONDS = 14 * 60  # Discord's interaction tokens die after 15 minutes; keep a margin
RequestBuilder = Callable[[], Awaitable[JobRequest]]
THREAD_TYPES = (discord.ChannelType.public_thread, discord.ChannelType.private_thread, discord.ChannelType.news_thread)
CogT = TypeVar("CogT", bound=commands.Cog)


def loaded_cog(bot: VideoBot, kind: type[CogT]) -> CogT:
    """This bot's cog of that class: the video cogs are extensions of their own that call on each other."""
    cog = bot.get_cog(kind.__cog_name__)
    if not isinstance(cog, kind):
        raise RuntimeError(f"the {kind.__cog_name__} cog is not loaded")
    return cog


def missing_permissions(permissions: discord.Permissions, *, in_thread: bool) -> list[str]:
    """What the bot lacks to post a job's card, thread, status and video here, in Discord's own words (English
    message ids)."""
    needed = {
        "view_channel": english("View Channel"),
        "send_messages_in_threads" if in_thread else "send_messages": (
            english("Send Messages in Threads") if in_thread else english("Send Messages")
        ),
        "embed_links": english("Embed Links"),
        "attach_files": english("Attach Files"),
    }
    if not in_thread:
        needed["create_public_threads"] = english("Create Public Threads")
    return [name for flag, name in needed.items() if not getattr(permissions, flag)]


def question_key(interaction: discord.Interaction[Any]) -> str:
    """The question a job made from this interaction answers, as the job's request key (one job per key): a sent
    form (its custom id is new each time it is shown), else the interaction itself (a command, whose Confirm or
    "queue it" answer carries the command's key on)."""
    if interaction.type is discord.InteractionType.modal_submit:
        data: dict[str, Any] = dict(interaction.data or {})
        return f"form:{data.get('custom_id')}"
    return f"interaction:{interaction.id}"


def private_fields(interaction: discord.Interaction[Any], private: bool) -> dict[str, Any]:
    """A private job keeps its interaction's token, to answer by follow-up while it lives if the DM is closed. A job
    from where only the user install reaches (`outside_the_bot`) is private: the bot cannot post a card there."""
    if not private and not outside_the_bot(interaction):
        return {}
    return {"private": True, "followup_token": interaction.token, "followup_until": time.time() + FOLLOWUP_SECONDS}


def spends_for(interaction: discord.Interaction[Any], job: Job) -> int | None:
    """Whose credits a press on `job`'s buttons spends (None: the press does not belong to it): the press's own
    server or personal quota; a private video of a server came to its member by DM, so their press there spends
    that server's quota, as if pressed in it."""
    scope = quota_scope(interaction)
    if job.guild_id == scope:
        return scope
    if interaction.guild_id is None and job.private and job.user_id == interaction.user.id:
        return job.guild_id
    return None


class MakingVideos(commands.Cog):
    """Turns a member's options, image or form into a `JobRequest`, and an accepted job into its card and thread."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs: JobService = bot.resources.jobs
        self.animate_menu = app_commands.ContextMenu(
            name=app_commands.locale_str("Animate image"), callback=self.animate
        )
        self.animate_menu.allowed_contexts = IN_SERVERS_AND_DMS
        # One card post at a time per channel: its posts share one Discord bucket (5 per 5 s), and discord.py lets
        # a crowd of posts waiting at once overrun it as it resets (the flood's 429s), as with the cards' edits.
        self.card_turns: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        # Likewise one thread opened at a time per channel (its bucket: 10 per 10 s): the threads follow the cards at
        # the cards' pace, so a crowd held back by the videos' posts on the pace would otherwise meet its reset.
        self.thread_turns: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.animate_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.animate_menu.name, type=self.animate_menu.type)

    # --- building requests ------------------------------------------------------------------------------

    def request(
        self,
        interaction: discord.Interaction[Any],
        kind: Literal["text", "image"],
        prompt: str | None,
        **extra: Any,
    ) -> JobRequest:
        """A request from a member's options (named as in `OPTIONS`), with the server's defaults filled in."""
        chosen = with_defaults({opt.name: extra.pop(opt.name, None) for opt in OPTIONS}, self.bot.settings)
        return JobRequest(
            kind=kind,
            prompt=prompt or "",
            **chosen,
            guild_id=extra.pop("guild_id", quota_scope(interaction)),
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            role_ids=extra.pop("role_ids", member_roles(interaction.user)),
            attachment_size_limit=interaction.filesize_limit,
            locale=str(interaction.locale),
            request_key=question_key(interaction),
            **extra,
        )

    async def again(self, interaction: discord.Interaction[Any], original: Job, **changes: Any) -> JobRequest:
        """A new job of the presser with the original's prompt, options and frames, but for `changes` (Edit's
        prompt, duration, sound and `edited_from`); `InvalidRequest` when a stored frame is gone."""
        frames = {}
        for name, digest in (("image", original.image_sha256), ("end_image", original.end_image_sha256)):
            if digest:
                frames[name] = await self.jobs.stored_frame(digest)
                if frames[name] is None:
                    raise InvalidRequest(english("The first frame of that video is no longer stored."))
        chosen = original.options.columns()
        for name in chosen.keys() & changes.keys():
            chosen[name] = changes.pop(name)
        return self.request(
            interaction,
            original.kind,  # type: ignore[arg-type]
            changes.pop("prompt", original.prompt),
            **chosen,
            **frames,
            image_url=original.image_url,
            image_source=original.image_source,
            parent_id=original.parent_id,  # another take of the same segment
            **await self.press_fields(interaction, original),
            **changes,
        )

    async def press_fields(self, interaction: discord.Interaction[Any], original: Job) -> dict[str, Any]:
        """What a job made from a press on `original`'s buttons (Re-roll, Edit, Continue) takes from it: a private
        video's next take is private too; pressed in the bot's DM, where a private server video came, it spends
        that server's quota with the member's roles there (`spends_for`)."""
        fields = private_fields(interaction, original.private)
        scope = spends_for(interaction, original)
        if interaction.guild_id is None and scope not in (None, PERSONAL):
            assert scope is not None
            fields |= {"guild_id": scope, "role_ids": await self.roles_in(scope, interaction.user.id)}
        return fields

    async def roles_in(self, guild_id: int, user_id: int) -> tuple[int, ...]:
        """A member's roles in a server, asked of Discord for a press that came from outside it (the bot's DM)."""
        guild = self.bot.get_guild(guild_id)
        if guild is None:
            raise InvalidRequest(english("I am no longer in that video's server."))
        try:
            member = guild.get_member(user_id) or await guild.fetch_member(user_id)
        except discord.NotFound:
            raise InvalidRequest(english("You are no longer a member of that video's server.")) from None
        except discord.HTTPException as exc:  # without the roles, the server's limits cannot be applied
            log.warning("could not fetch the roles of member %s in server %s: %s", user_id, guild_id, exc)
            raise InvalidRequest(
                english("Discord did not tell me your roles in that video's server. Try again.")
            ) from None
        return member_roles(member)

    def home_of(self, original: Job) -> discord.abc.Messageable | None:
        """Where a new take of a video goes: beside the original's card (so it has its own thread)."""
        channel = self.bot.get_channel(original.channel_id) if original.channel_id else None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    # --- the requests of /video text, /video image and the Animate image menu ----------------------------

    async def from_text(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        private: bool = False,
        **chosen: Any,
    ) -> None:
        """`chosen`: the member's options, named as in `OPTIONS` (None: not chosen)."""

        async def build() -> JobRequest:
            return self.request(interaction, "text", prompt, **chosen, **private_fields(interaction, private))

        await self.start_job(interaction, build)

    async def from_image(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        private: bool = False,
        *,
        prompt: str | None,
        end_image: discord.Attachment | None = None,
        **chosen: Any,
    ) -> None:
        async def build() -> JobRequest:
            frame, source, url = await read_first_frame(image, self.bot.resources.images)
            # The last frame is checked as the first is; its bytes are stored and sent, never its (expiring) URL.
            end = (await read_first_frame(end_image, self.bot.resources.images))[0] if end_image else None
            return self.request(
                interaction,
                "image",
                prompt,
                image=frame,
                end_image=end,
                image_source=source,
                frame_url=url,
                **chosen,
                **private_fields(interaction, private),
            )

        await self.start_job(interaction, build)

    async def animate(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """Message menu: animate the first image of a message, asking for the prompt in a modal."""
        image = next(
            (
                a
                for a in message.attachments
                if (a.content_type or "").startswith("image/") or a.filename.lower().endswith(IMAGE_SUFFIXES)
            ),
            None,
        )
        if image is None:
            raise UserFacingError(
                tr(
                    interaction.locale,
                    "That message has no image attached; use it on a message with a JPG, PNG or WebP.",
                )
            )
        await interaction.response.send_modal(AnimateModal(self, image, interaction.locale))

    # --- starting a job ---------------------------------------------------------------------------------

    async def start_job(
        self,
        interaction: discord.Interaction[Any],
        build: RequestBuilder,
        *,
        channel: discord.abc.Messageable | None = None,
        confirmed: bool = False,
        answer_first: bool = False,
    ) -> Job | None:
        """Check where the job will live, reserve it, post its card and thread, then send it.

        Everything that can refuse the job runs before a credit is held; once the job is reserved, no Discord
        failure is reported as "nothing was charged". A job above the server's confirm-above threshold first asks
        the member (unless `confirmed`), and nothing is reserved before they press Confirm. With `answer_first` the
        member is told once the job is reserved, and the rest (card, send, thread) runs on the background lane."""
        locale = interaction.locale
        if self.bot.closing:  # a button or a form during shutdown: the store is about to close
            raise UserFacingError(tr(locale, STOPPING))
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        channel = channel or interaction.channel  # type: ignore[assignment]
        if not isinstance(channel, discord.abc.Messageable) or isinstance(channel, discord.ForumChannel):
            raise UserFacingError(tr(locale, "Use this command in a text channel or a thread."))
        # The bot's own DM, or where only the user install reaches (its job is private): no permissions to lack.
        nothing_to_check = interaction.guild_id is None or outside_the_bot(interaction)
        missing = (
            []
            if nothing_to_check
            else missing_permissions(self._permissions_in(interaction, channel), in_thread=self._no_thread(channel))
        )
        if missing:
            raise UserFacingError(
                tr(
                    locale,
                    "I cannot make videos in this channel: I lack {permissions}. "
                    "Ask a moderator to give me that here. Nothing was charged.",
                    permissions=", ".join(tr(locale, name) for name in missing),
                )
            )
        try:
            # The job lives where its card is posted (a re-roll's card goes beside the original, not in its thread).
            request = replace(await build(), channel_id=getattr(channel, "id", interaction.channel_id))
            # Buttons and forms do not pass the tree's check; a press in the bot's DM may still spend a server's
            # quota (a private video's buttons: `spends_for`), so what is checked is the quota the job spends.
            if request.guild_id in (None, PERSONAL) and (refusal := refused_here(interaction)) is not None:
                raise UserFacingError(tr(locale, refusal))
            if not confirmed and await self._ask_to_confirm(interaction, request, channel):
                return None
            job = await self.jobs.reserve(request)
        except InvalidRequest as exc:
            reason = translated(locale, str(exc))
            raise UserFacingError(tr(locale, "{reason} Nothing was sent or charged.", reason=reason)) from None
        except QuotaRefused as exc:
            reason = refusal_text(exc, locale)
            raise UserFacingError(tr(locale, "{reason} Nothing was charged.", reason=reason)) from None
        except DuplicateRequest:  # the same question answered in another process (or a form sent twice)
            log.info("user %s: a second answer to %s was refused", interaction.user.id, request.request_key)
            raise UserFacingError(tr(locale, ALREADY_ANSWERED)) from None
        except ServiceUnavailable as exc:
            await interaction.followup.send(
                tr(
                    locale,
                    "{reason} Or I can queue it (your credits are held) and make it when the service is back.",
                    reason=translated(locale, str(exc)),
                ),
                view=WaitView(self, request, channel),
                ephemeral=True,
            )
            return None
        if job.private:
            return await self._start_private(interaction, job, request)
        if not answer_first:
            return await self._launch(interaction, channel, job, request, None, None)
        costs = await self.cost_line(interaction, job.cost_estimate, request)
        # The member hears at once (interaction answers are not under the channel's message limit); the card waits
        # its turn in the channel on the background lane, and the answer is corrected if the job is not made.
        answer = await self._tell_on_its_way(interaction, job, tr(locale, "this channel"), costs)
        return await asyncio.create_task(self._launch_in_background(interaction, channel, job, request, costs, answer))

    async def _launch_in_background(
        self,
        interaction: discord.Interaction[Any],
        channel: discord.abc.Messageable,
        job: Job,
        request: JobRequest,
        costs: str,
        answer: discord.WebhookMessage,
    ) -> Job | None:
        LANE.set(Lane.BACKGROUND)  # this task's own context: the member already has their answer
        return await self._launch(interaction, channel, job, request, costs, answer)

    async def _launch(
        self,
        interaction: discord.Interaction[Any],
        channel: discord.abc.Messageable,
        job: Job,
        request: JobRequest,
        costs: str | None,
        answer: discord.WebhookMessage | None,
    ) -> Job | None:
        """Post a reserved job's card, send the job, open its thread and status message. `answer`: the member
        was already told it is on its way, with the cost line `costs` (then a failure edits that answer instead of
        raising)."""
        locale, told_before = interaction.locale, answer is not None
        card, frame_url = await self._post_card(interaction, channel, job, request)
        if card is None:
            await self.jobs.release(job, english("its card could not be posted"))
            if answer is None:
                raise UserFacingError(
                    tr(locale, "I could not post in this channel, so nothing was sent or charged. Try again.")
                )
            # Accepted and announced: its credits were held, so say they were given back (not "never charged").
            await self._correct(answer, tr(locale, CARD_REFUSED_AFTER_ANSWER))
            return None
        reserved = job
        try:
            job = await self.jobs.start(replace(job, frame_url=frame_url), request)
        except SubmitRefused as exc:
            with contextlib.suppress(discord.HTTPException):
                await card.delete()  # a refused prompt stays private
            if answer is None:
                raise UserFacingError(translated(locale, exc.reason)) from None
            await self._correct(answer, translated(locale, exc.reason))
            return None
        if costs is None or job.cost_estimate != reserved.cost_estimate:  # sent without sound: charged as silent
            costs = await self.cost_line(interaction, job.cost_estimate, request)
        # Else the answer keeps what was left when it was first told: the member's next job may be reserved since.
        if answer is None:
            # The member hears first: the thread may wait its turn behind the channel's limits on Discord's side.
            answer = await self._tell_on_its_way(interaction, job, tr(locale, "this channel"), costs)
        thread = await self._open_job_thread(interaction, channel, card, job)
        current = await self.jobs.get(job.id)
        if current is not None and current.status != job.status:
            self.bot.dispatch("job_changed", current)  # it moved while its thread was being opened
        if thread is not None or told_before:  # an answer sent before the submit learns a dropped sound choice
            where = thread.mention if thread is not None else tr(locale, "this channel")
            with contextlib.suppress(discord.HTTPException):
                await answer.edit(content=self._on_its_way(interaction, job, where, costs))
        server = self.bot.server_locale(job.guild_id)
        await self.bot.post_log(
            job.guild_id,
            tr(
                server,
                "▶️ {mention} started video `{id}` ({options}) in {channel}",
                mention=f"<@{job.user_id}>",
                id=job.id[:8],
                options=options_line(job, server),
                channel=f"<#{job.channel_id}>",
            ),
        )
        return job

    async def _start_private(self, interaction: discord.Interaction[Any], job: Job, request: JobRequest) -> Job:
        """A private job: no card, no thread, no prompt in the log channel; the answer is ephemeral and the video
        goes to the member by DM (see cogs/delivery.py)."""
        locale = interaction.locale
        try:
            job = await self.jobs.start(job, request)
        except SubmitRefused as exc:
            raise UserFacingError(translated(locale, exc.reason)) from None
        text = tr(
            locale,
            "Your private video `{id}` is on its way ({options}); it comes to you by direct message.",
            id=job.id[:8],
            options=options_line(job, locale),
        )
        if job.sound_dropped:
            text += "\n" + tr(locale, SOUND_DROPPED_NOTE)
        await interaction.followup.send(
            text + "\n" + await self.cost_line(interaction, job.cost_estimate, request), ephemeral=True
        )
        server = self.bot.server_locale(job.guild_id)
        await self.bot.post_log(
            job.guild_id,
            tr(server, "🔒 {mention} started a private video `{id}`", mention=f"<@{job.user_id}>", id=job.id[:8]),
        )
        return job

    @staticmethod
    def _on_its_way(interaction: discord.Interaction[Any], job: Job, where: str, costs: str) -> str:
        locale = interaction.locale
        text = tr(
            locale,
            "Your video `{id}` is on its way ({options}); follow it in {where}.",
            id=job.id[:8],
            options=options_line(job, locale),
            where=where,
        )
        if job.sound_dropped:
            text += "\n" + tr(locale, SOUND_DROPPED_NOTE)
        return text + "\n" + costs

    async def _tell_on_its_way(
        self, interaction: discord.Interaction[Any], job: Job, where: str, costs: str
    ) -> discord.WebhookMessage:
        text = self._on_its_way(interaction, job, where, costs)
        return await interaction.followup.send(text, ephemeral=True, wait=True)

    @staticmethod
    async def _correct(answer: discord.WebhookMessage, text: str) -> None:
        """Replace an "on its way" answer with why the job was not made (only logged if Discord refuses)."""
        try:
            await answer.edit(content=text)
        except discord.HTTPException:
            log.warning("could not correct the answer %s: %s", answer.id, text)

    async def cost_line(self, interaction: discord.Interaction[Any], cost: int, request: JobRequest) -> str:
        """The job's cost, what the member has left now and when it resets (in the reader's own time zone), in the
        quota `request` spends."""
        credits = self.bot.resources.credits
        status = await credits.status(request.guild_id or PERSONAL, interaction.user.id, request.role_ids)
        locale = interaction.locale
        left = tr(locale, "unlimited") if status.remaining is None else format_credits(status.remaining)
        reset_at = status.window.reset_at
        resets = f"<t:{int(reset_at.timestamp())}:R>" if reset_at else tr(locale, "never")
        return tr(
            locale,
            "Cost: {cost} credits · left: {left} · resets {resets}",
            cost=format_credits(cost),
            left=left,
            resets=resets,
        )

    async def _ask_to_confirm(
        self, interaction: discord.Interaction[Any], request: JobRequest, channel: discord.abc.Messageable
    ) -> bool:
        """Above the server's confirm-above threshold: show the cost with Confirm and Cancel (True: asked)."""
        self.jobs.validate(request)  # a mistake is named now, not after the member confirmed
        threshold = (await self.bot.resources.credits.settings(request.guild_id or PERSONAL)).confirm_above
        cost = await self.jobs.request_cost(request)
        if threshold is None or cost <= threshold:
            return False
        timeout = self.bot.settings.confirm_timeout_seconds
        view = ConfirmView(self, request, channel, interaction.locale, timeout)
        text = tr(
            interaction.locale,
            "This video costs more than {threshold} credits, so it waits for your Confirm.\n{costs}\n"
            "Nothing is reserved until you press Confirm; this question expires {expires}.",
            threshold=format_credits(threshold),
            costs=await self.cost_line(interaction, cost, request),
            expires=f"<t:{int(time.time() + timeout)}:R>",
        )
        view.message = await interaction.followup.send(text, view=view, ephemeral=True, wait=True)
        log.info("user %s asked to confirm a job of %d milli-credits", interaction.user.id, cost)
        return True

    def _permissions_in(
        self, interaction: discord.Interaction[Any], channel: discord.abc.Messageable
    ) -> discord.Permissions:
        """The bot's permissions where the card goes: Discord tells them for the interaction's own channel."""
        if getattr(channel, "id", None) == interaction.channel_id:
            return interaction.app_permissions
        guild = interaction.guild
        if guild is not None and isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            return channel.permissions_for(guild.me)
        return interaction.app_permissions

    @staticmethod
    def _no_thread(channel: discord.abc.Messageable) -> bool:
        """True where no thread can be opened (inside a thread or a forum post, a DM): the job is posted in place."""
        kind = getattr(channel, "type", None)
        return isinstance(channel, discord.Thread | discord.DMChannel) or kind in (
            *THREAD_TYPES,
            discord.ChannelType.private,
        )

    async def _post_card(
        self, interaction: discord.Interaction[Any], channel: discord.abc.Messageable, job: Job, request: JobRequest
    ) -> tuple[discord.Message | None, str | None]:
        """Post the job's card with the first frame it animates; returns it (None if refused) and the URL of that
        frame a gateway can fetch (the member's attachment when sent as is, else the card's copy)."""
        frame, file, name = request.image, None, None
        if frame and request.frame_url:  # the member's image is the frame's URL: the card only shows a preview
            file = discord.File(io.BytesIO(await card_preview(frame)), filename=(name := "first-frame.jpg"))
        elif frame:  # the card's copy is the frame's URL (for the gateway, and for the card's later edits)
            content = frame.content if isinstance(frame.content, Path) else io.BytesIO(frame.content)
            file = discord.File(content, filename=(name := frame_filename(frame.mime)))
        try:
            async with self.card_turns[getattr(channel, "id", 0)]:
                card = await channel.send(
                    embed=job_card(job, frame=name),
                    allowed_mentions=discord.AllowedMentions.none(),
                    files=[file] if file else [],
                )
        except discord.HTTPException:
            log.warning("job %s: could not post its card in channel %s", job.id, interaction.channel_id, exc_info=True)
            return None, None
        frame_url = request.frame_url or (card.attachments[0].url if frame and card.attachments else None)
        if frame_url is not None:
            await self.jobs.set_frame_url(job.id, frame_url)
        return card, frame_url

    async def _open_job_thread(
        self, interaction: discord.Interaction[Any], channel: discord.abc.Messageable, card: discord.Message, job: Job
    ) -> discord.Thread | None:
        """Open the accepted job's thread and status message; where that fails, the card carries the status."""
        thread = None if self._no_thread(channel) else await self._open_thread(interaction, channel, card, job)
        status = card
        if thread is None:
            with contextlib.suppress(discord.HTTPException):
                await card.edit(
                    embed=job_card(job, note=tr(job.locale, NO_THREAD_NOTE)),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
        else:
            position = None
            if job.status == "queued":
                position = next((n for n, j in enumerate(await self.jobs.queue_order(), 1) if j.id == job.id), None)
            try:
                estimate = await self.jobs.estimate_seconds(job.duration, job.resolution)
                status = await thread.send(status_line(job, time.time(), estimate, position))
            except discord.HTTPException:
                log.warning("job %s: could not post its status in thread %s; the card shows it", job.id, thread.id)
        await self.jobs.set_discord_refs(
            job.id, message_id=card.id, thread_id=thread.id if thread else None, status_message_id=status.id
        )
        return thread

    async def _open_thread(
        self, interaction: discord.Interaction[Any], channel: discord.abc.Messageable, card: discord.Message, job: Job
    ) -> discord.Thread | None:
        if not isinstance(channel, discord.TextChannel | discord.VoiceChannel | discord.PartialMessageable):
            return None
        try:
            async with self.thread_turns[channel.id]:
                return await channel.get_partial_message(card.id).create_thread(
                    name=thread_name(job), auto_archive_duration=1440
                )
        except (discord.HTTPException, ValueError) as exc:
            log.info("job %s: no thread in channel %s (%s); posting in place", job.id, interaction.channel_id, exc)
            return None

    # --- the Continue form's first frame ----------------------------------------------------------------

    async def last_frame_of(self, job: Job, locale: object) -> FirstFrame:
        """The last frame of a delivered video, checked as a first frame; `InvalidRequest` says what went wrong."""
        assert job.video_url is not None
        with tempfile.TemporaryDirectory(prefix="continue-") as folder:
            path = Path(folder) / "segment.mp4"
            try:
                await download_video(self.bot.resources.session, job.video_url, path, max_bytes=MAX_VIDEO_BYTES)
                data = await clips.last_frame(path)
            except (DownloadFailed, VideoTooLarge) as exc:
                log.info("job %s: its video could not be fetched to continue it: %s", job.id, exc)
                raise InvalidRequest(
                    tr(locale, "That video can no longer be downloaded ({reason}), so it cannot be continued.",
                       reason=str(exc))
                ) from None  # fmt: skip
            except clips.ClipError as exc:
                log.warning("job %s: no last frame: %s", job.id, exc)
                raise InvalidRequest(tr(locale, "That video could not be read, so it cannot be continued.")) from None
        try:
            return await check_first_frame(data)
        except ImageRejected as exc:
            raise InvalidRequest(
                tr(locale, "That video's last frame cannot start a video: {reason}", reason=str(exc))
            ) from None


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(MakingVideos(bot))
