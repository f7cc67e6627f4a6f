"""The members' commands: /video text|image|status|history, the Animate image menu, and the buttons."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import (
    NOT_IN_A_SERVER,
    SOMETHING_WENT_WRONG,
    STOPPING,
    UserFacingError,
    VideoBot,
    in_a_server,
    reply_ephemeral,
)
from bot.core.credits import QuotaRefused
from bot.core.i18n import english, tr, translated
from bot.core.jobs import MAX_PROMPT, InvalidRequest, JobRequest, JobService, ServiceUnavailable, SubmitRefused
from bot.core.model import OPEN, WAITING, DuplicateRequest, Job
from bot.core.quota import format_credits
from bot.media import clips
from bot.media.downloads import MAX_VIDEO_BYTES, DownloadFailed, ImageFetcher, VideoTooLarge, download_video
from bot.media.images import (
    MAX_UPLOAD_BYTES,
    FirstFrame,
    ImageRejected,
    card_preview,
    check_first_frame,
    check_first_frame_file,
)
from cogs.messages import (
    cancel_text,
    clock,
    fit_lines,
    frame_filename,
    job_card,
    job_state,
    options_line,
    refusal_text,
    status_line,
    thread_name,
)
from cogs.quota import member_roles
from cogs.views import ContinueButton, DeleteButton, JoinButton, PagedView, RerollButton

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
HISTORY_PAGE = 5
NO_THREAD_NOTE = english("A thread could not be started here, so this job's updates follow in this channel.")
# A second press of a button that spends (or a second send of a form): the first one made the only job.
ALREADY_ANSWERED = english("This was already confirmed or cancelled; nothing more was reserved or charged.")

RequestBuilder = Callable[[], Awaitable[JobRequest]]
THREAD_TYPES = (discord.ChannelType.public_thread, discord.ChannelType.private_thread, discord.ChannelType.news_thread)


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


def question_key(interaction: discord.Interaction[Any]) -> str:
    """The question a job made from this interaction answers, as the job's request key (one job per key): a sent
    form (its custom id is new each time it is shown), else the interaction itself (a command, whose Confirm or
    "queue it" answer carries the command's key on)."""
    if interaction.type is discord.InteractionType.modal_submit:
        data: dict[str, Any] = dict(interaction.data or {})
        return f"form:{data.get('custom_id')}"
    return f"interaction:{interaction.id}"


def is_moderator(interaction: discord.Interaction[Any]) -> bool:
    """Manage Messages or Manage Server in this channel."""
    permissions = interaction.permissions
    return permissions.manage_messages or permissions.manage_guild


class JobForm(discord.ui.Modal):
    """A form that makes a job: a prompt and a duration (and what a subclass adds), in the member's language.

    The inputs are made here, not as class attributes: their labels can only be set, without a deprecation
    warning, when they are made."""

    def __init__(self, cog: VideoCog, *, title: str, placeholder: str, duration: int, locale: object) -> None:
        super().__init__(title=title)
        self.cog = cog
        self.prompt: discord.ui.TextInput[JobForm] = discord.ui.TextInput(
            label=tr(locale, "Prompt (optional)"),
            style=discord.TextStyle.paragraph,
            required=False,
            max_length=MAX_PROMPT["image"],
            placeholder=placeholder,
        )
        self.duration: discord.ui.TextInput[JobForm] = discord.ui.TextInput(
            label=tr(locale, "Duration in seconds (3-15)"), default=str(duration), max_length=2
        )
        self.add_item(self.prompt)
        self.add_item(self.duration)
        self.sent = False

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        # A form sent twice at once makes one job: the flag is set before any await (its request key, the form's
        # custom id, refuses a second job in any process too).
        if self.sent:
            await reply_ephemeral(interaction, tr(interaction.locale, ALREADY_ANSWERED))
            return False
        self.sent = True
        self.stop()
        return True

    def chosen_duration(self) -> int:
        try:
            return int(self.duration.value.strip())
        except ValueError:
            raise InvalidRequest(
                english(
                    "The duration must be a whole number from 3 to 15, not {value}.", value=repr(self.duration.value)
                )
            ) from None

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:  # type: ignore[override]
        if isinstance(error, UserFacingError):  # a member's mistake: the same answer as the slash commands give
            await reply_ephemeral(interaction, str(error))
            return
        log.error("the form %r failed for user %s", type(self).__name__, interaction.user.id, exc_info=error)
        await reply_ephemeral(interaction, tr(interaction.locale, SOMETHING_WENT_WRONG))


class AnimateModal(JobForm):
    """Asks for the prompt and options when an image is animated from the message menu."""

    def __init__(self, cog: VideoCog, attachment: discord.Attachment, locale: object = None) -> None:
        super().__init__(
            cog,
            title=tr(locale, "Animate image"),
            placeholder=tr(locale, "What happens in the video"),
            duration=5,
            locale=locale,
        )
        self.attachment = attachment
        self.resolution: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label=tr(locale, "Resolution (720p or 1080p)"), default="720p", max_length=5
        )
        self.add_item(self.resolution)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        async def build() -> JobRequest:
            duration = self.chosen_duration()
            frame, source, url = await read_first_frame(self.attachment, self.cog.bot.resources.images)
            return self.cog.request(
                interaction,
                "image",
                self.prompt.value,
                duration=duration,
                resolution=self.resolution.value.strip().lower(),
                image=frame,
                image_source=source,
                frame_url=url,
            )

        await self.cog.start_job(interaction, build)


class ContinueModal(JobForm):
    """Asks for the next segment's prompt and duration; its first frame is the delivered video's last frame."""

    def __init__(self, cog: VideoCog, parent: Job, locale: object) -> None:
        super().__init__(
            cog,
            title=tr(locale, "Continue the video"),
            placeholder=tr(locale, "What happens next"),
            duration=cog.bot.settings.default_duration,
            locale=locale,
        )
        self.parent = parent

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        async def build() -> JobRequest:
            duration = self.chosen_duration()
            frame = await self.cog.last_frame_of(self.parent, interaction.locale)
            return self.cog.request(
                interaction,
                "image",
                self.prompt.value,
                duration=duration,
                resolution=self.parent.resolution,
                image=frame,
                image_source=f"last frame of {self.parent.id[:8]}",
                parent_id=self.parent.id,
            )

        # The next segment goes where this video is (its thread): no new thread.
        await self.cog.start_job(interaction, build)


class OneShotView(discord.ui.View):
    """A question about one job (its buttons spend or decline): only the member who asked may answer, and only
    once. The first answer claims the view before any await, so a second press arriving with it (a double click, a
    laggy client) is told so and spends nothing; the job's request key refuses a second job in any process too."""

    def __init__(self, request: JobRequest, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.request = request
        self.answered = False

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if interaction.user.id == self.request.user_id:
            return True
        text = tr(
            interaction.locale, "Only the member who asked for this video can answer; nothing was reserved or charged."
        )
        await reply_ephemeral(interaction, text)
        return False

    async def claim(self, interaction: discord.Interaction[Any]) -> bool:
        """True for the first answer, which stops the view (no time-out edit follows); a later one is told so.
        Everything before this method's first await runs at once, so presses together cannot both pass."""
        if self.answered:
            await reply_ephemeral(interaction, tr(interaction.locale, ALREADY_ANSWERED))
            return False
        self.answered = True
        self.stop()
        return True


class WaitView(OneShotView):
    """Offered when the video service is down: the member may choose to queue the job instead."""

    def __init__(self, cog: VideoCog, request: JobRequest, channel: discord.abc.Messageable) -> None:
        super().__init__(replace(request, wait_if_unavailable=True), timeout=600)
        self.cog = cog
        self.channel = channel
        self.queue_it.label = tr(request.locale, "Queue it for when the service is back")

    @discord.ui.button(label="Queue it for when the service is back", style=discord.ButtonStyle.primary)
    async def queue_it(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        if not await self.claim(interaction):
            return

        async def build() -> JobRequest:
            return self.request

        try:  # a job that needed confirming was confirmed before it met the outage
            await self.cog.start_job(interaction, build, channel=self.channel, confirmed=True)
        except UserFacingError as exc:
            await reply_ephemeral(interaction, str(exc))


class ConfirmView(OneShotView):
    """Confirm or Cancel for a job above the server's confirm-above threshold.

    Nothing is reserved until Confirm, so this view lives in memory only: a restart forgets it and costs nothing.
    When it times out its buttons are taken away and the message says it expired."""

    def __init__(
        self, cog: VideoCog, request: JobRequest, channel: discord.abc.Messageable, locale: Any, timeout: float
    ) -> None:
        super().__init__(request, timeout=timeout)
        self.cog = cog
        self.channel = channel
        self.locale = locale
        self.message: discord.WebhookMessage | None = None

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        if not await self.claim(interaction):
            return
        await interaction.response.edit_message(content=tr(interaction.locale, "Confirmed."), view=None)

        async def build() -> JobRequest:
            return self.request

        try:
            await self.cog.start_job(interaction, build, channel=self.channel, confirmed=True)
        except UserFacingError as exc:
            await reply_ephemeral(interaction, str(exc))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        if not await self.claim(interaction):
            return
        text = tr(interaction.locale, "Cancelled; nothing was reserved or charged.")
        await interaction.response.edit_message(content=text, view=None)

    async def on_timeout(self) -> None:
        if self.message is None:
            return
        text = tr(
            self.locale,
            "This confirmation expired; nothing was reserved or charged. Run the command again to make the video.",
        )
        with contextlib.suppress(discord.HTTPException):  # the interaction's token may have run out
            await self.message.edit(content=text, view=None)


class VideoCog(commands.Cog):
    """Turns Discord input into `JobRequest`s and jobs into messages."""

    video = app_commands.Group(name="video", description="Make short videos with Kling", guild_only=True)

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs: JobService = bot.resources.jobs
        self.rerolling: set[tuple[str, int]] = set()  # (video's job id, member) of the re-rolls starting now
        self.animate_menu = app_commands.ContextMenu(
            name=app_commands.locale_str("Animate image"), callback=self.animate
        )
        self.animate_menu.guild_only = True
        # Joins in this process: the chains (by their first job) being joined, and when each member (server, user)
        # last started one. A chain's buttons are in one server, so one process hears all of its presses.
        self.joining: set[str] = set()
        self.joined_at: dict[tuple[int, int], float] = {}

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.animate_menu)
        self.bot.add_dynamic_items(RerollButton, DeleteButton, ContinueButton, JoinButton)
        clips.start_joins(self.bot.settings.join_processes)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.animate_menu.name, type=self.animate_menu.type)
        self.bot.remove_dynamic_items(RerollButton, DeleteButton, ContinueButton, JoinButton)
        clips.stop_joins()

    # --- building requests ------------------------------------------------------------------------------

    def request(
        self,
        interaction: discord.Interaction[Any],
        kind: Literal["text", "image"],
        prompt: str | None,
        *,
        duration: int | None = None,
        resolution: str | None = None,
        **extra: Any,
    ) -> JobRequest:
        """A request from a member's options, with the server's defaults filled in."""
        settings = self.bot.settings
        return JobRequest(
            kind=kind,
            prompt=prompt or "",
            duration=duration if duration is not None else settings.default_duration,
            resolution=resolution or settings.default_resolution,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            role_ids=member_roles(interaction.user),
            attachment_size_limit=interaction.filesize_limit,
            locale=str(interaction.locale),
            request_key=question_key(interaction),
            **extra,
        )

    # --- the commands -----------------------------------------------------------------------------------

    @video.command(name="text", description="Make a video from a text prompt")
    @app_commands.describe(
        prompt="What the video shows (up to 3072 characters)",
        aspect_ratio="The shape of the video (default 16:9)",
        resolution="720p (default) or 1080p; 1080p costs more credits",
        duration="Length in seconds, 3 to 15 (default 5)",
    )
    async def text(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 3072],
        aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None,
        resolution: Literal["720p", "1080p"] | None = None,
        duration: app_commands.Range[int, 3, 15] | None = None,
    ) -> None:
        async def build() -> JobRequest:
            return self.request(
                interaction, "text", prompt, duration=duration, resolution=resolution, aspect_ratio=aspect_ratio
            )

        await self.start_job(interaction, build)

    @video.command(name="image", description="Make a video that starts from your image")
    @app_commands.describe(
        image="The first frame: a JPG, PNG or WebP image, at least 300 px a side",
        prompt="What happens in the video (optional, up to 2500 characters)",
        resolution="720p (default) or 1080p; 1080p costs more credits",
        duration="Length in seconds, 3 to 15 (default 5)",
    )
    async def image(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2500] | None = None,
        resolution: Literal["720p", "1080p"] | None = None,
        duration: app_commands.Range[int, 3, 15] | None = None,
    ) -> None:
        async def build() -> JobRequest:
            frame, source, url = await read_first_frame(image, self.bot.resources.images)
            return self.request(
                interaction,
                "image",
                prompt,
                duration=duration,
                resolution=resolution,
                image=frame,
                image_source=source,
                frame_url=url,
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

    @video.command(name="notify", description="How you are told that your video is done")
    @app_commands.describe(mode="mention: in the video's thread (default) · dm: a direct message · off: neither")
    async def notify(self, interaction: discord.Interaction[Any], mode: Literal["mention", "dm", "off"]) -> None:
        await self.jobs.set_notify_preference(interaction.user.id, mode)
        locale = interaction.locale
        texts = {
            "mention": tr(locale, "You will be mentioned in the video's thread when it is done or fails."),
            "dm": tr(
                locale,
                "You will get a direct message with a link when your video is done or fails; if your direct "
                "messages are closed, you are mentioned in the thread instead.",
            ),
            "off": tr(locale, "You will not be mentioned or messaged; `/video status` shows your videos."),
        }
        await interaction.response.send_message(texts[mode], ephemeral=True)

    @video.command(name="status", description="Your videos in progress, or one job in detail")
    @app_commands.describe(job="A job id (the first characters are enough)")
    async def status(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        now = time.time()
        if job:
            found = await self._find_job(interaction, job)
            text = self._job_details(found, now, interaction.locale)
        else:
            jobs = await self.jobs.member_jobs(interaction.guild_id, interaction.user.id, statuses=OPEN, limit=25)
            locale = interaction.locale
            if not jobs:
                text = tr(locale, "You have no videos in progress. Start one with `/video text` or `/video image`.")
            else:
                lines = [self._job_line(j, now, locale) for j in jobs]
                text = fit_lines(tr(locale, "**Your videos in progress**"), lines, locale=locale)
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @status.autocomplete("job")
    async def _status_job_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._job_choices(interaction, current, None)

    @video.command(name="cancel", description="Cancel a job that is still waiting in the queue")
    @app_commands.describe(job="The job id (the first characters are enough)")
    async def cancel(self, interaction: discord.Interaction[Any], job: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        moderator = is_moderator(interaction)
        user_id = None if moderator else interaction.user.id
        found = await self.jobs.find(interaction.guild_id, job, user_id=user_id, statuses=WAITING)
        if found is None:
            raise UserFacingError(tr(interaction.locale, "There is no job waiting to be sent with that id here."))
        try:
            cancelled = await self.jobs.cancel(
                found.id,
                guild_id=interaction.guild_id,
                user_id=interaction.user.id,
                moderator=is_moderator(interaction),
            )
        except InvalidRequest as exc:
            raise UserFacingError(translated(interaction.locale, str(exc))) from None
        self.bot.dispatch("job_changed", cancelled)
        await interaction.followup.send(cancel_text(cancelled, interaction.locale), ephemeral=True)

    @cancel.autocomplete("job")
    async def _cancel_job_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._job_choices(interaction, current, WAITING)

    async def _job_choices(
        self, interaction: discord.Interaction[Any], current: str, statuses: tuple[str, ...] | None
    ) -> list[app_commands.Choice[str]]:
        """The member's jobs whose id starts with what they typed (Discord allows 100 characters a name)."""
        if interaction.guild_id is None:
            return []
        jobs = await self.jobs.member_jobs(interaction.guild_id, interaction.user.id, statuses=statuses, limit=25)
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=f"{j.id[:8]} · {job_state(j, interaction.locale)} · {j.prompt}"[:100], value=j.id)
            for j in jobs
            if j.id.startswith(typed)
        ]

    @video.command(name="history", description="Your recent videos")
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, user_id = interaction.guild_id, interaction.user.id
        assert guild_id is not None
        total = await self.jobs.count_member_jobs(guild_id, user_id)
        locale = interaction.locale

        async def render(page: int) -> tuple[str, bool]:
            jobs = await self.jobs.member_jobs(guild_id, user_id, limit=HISTORY_PAGE, offset=page * HISTORY_PAGE)
            if not jobs:
                return tr(locale, "You have not made any videos here yet."), False
            pages = (total + HISTORY_PAGE - 1) // HISTORY_PAGE
            lines = [self._history_line(j, locale) + await self._chain_note(j, locale) for j in jobs]
            more = (page + 1) * HISTORY_PAGE < total
            header = tr(locale, "**Your videos** (page {page} of {pages})", page=page + 1, pages=pages)
            return fit_lines(header, lines, locale=locale), more

        await PagedView(user_id, render, locale=locale).show(interaction)

    # --- starting a job ---------------------------------------------------------------------------------

    async def start_job(
        self,
        interaction: discord.Interaction[Any],
        build: RequestBuilder,
        *,
        channel: discord.abc.Messageable | None = None,
        confirmed: bool = False,
    ) -> Job | None:
        """Check where the job will live, reserve it, post its card and thread, then send it.

        Everything that can refuse the job runs before a credit is held; once the job is reserved, no Discord
        failure is reported as "nothing was charged". A job above the server's confirm-above threshold first asks
        the member (unless `confirmed`), and nothing is reserved before they press Confirm."""
        locale = interaction.locale
        if self.bot.closing:  # a button or a form during shutdown: the store is about to close
            raise UserFacingError(tr(locale, STOPPING))
        if not in_a_server(interaction):  # buttons and forms do not pass the tree's check
            raise UserFacingError(tr(locale, NOT_IN_A_SERVER))
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        channel = channel or interaction.channel  # type: ignore[assignment]
        if not isinstance(channel, discord.abc.Messageable) or isinstance(channel, discord.ForumChannel):
            raise UserFacingError(tr(locale, "Use this command in a text channel or a thread."))
        missing = missing_permissions(self._permissions_in(interaction, channel), in_thread=self._no_thread(channel))
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
        card, frame_url = await self._post_card(interaction, channel, job, request)
        if card is None:
            await self.jobs.release(job, english("its card could not be posted"))
            raise UserFacingError(
                tr(locale, "I could not post in this channel, so nothing was sent or charged. Try again.")
            )
        try:
            job = await self.jobs.start(replace(job, frame_url=frame_url), request)
        except SubmitRefused as exc:
            with contextlib.suppress(discord.HTTPException):
                await card.delete()  # a refused prompt stays private
            raise UserFacingError(translated(locale, exc.reason)) from None
        thread = await self._open_job_thread(interaction, channel, card, job)
        current = await self.jobs.get(job.id)
        if current is not None and current.status != job.status:
            self.bot.dispatch("job_changed", current)  # it moved while its thread was being opened
        where = thread.mention if thread else tr(locale, "this channel")
        await interaction.followup.send(
            tr(
                locale,
                "Your video `{id}` is on its way ({options}); follow it in {where}.",
                id=job.id[:8],
                options=options_line(job, locale),
                where=where,
            )
            + "\n"
            + await self.cost_line(interaction, job.cost_estimate),
            ephemeral=True,
        )
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

    async def cost_line(self, interaction: discord.Interaction[Any], cost: int) -> str:
        """The job's cost, what the member has left now and when it resets (in the reader's own time zone)."""
        assert interaction.guild_id is not None
        credits = self.bot.resources.credits
        status = await credits.status(interaction.guild_id, interaction.user.id, member_roles(interaction.user))
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
        if interaction.guild_id is None:
            return False
        self.jobs.validate(request)  # a mistake is named now, not after the member confirmed
        threshold = (await self.bot.resources.credits.settings(interaction.guild_id)).confirm_above
        cost = self.jobs.cost_of(request.duration, request.resolution)
        if threshold is None or cost <= threshold:
            return False
        timeout = self.bot.settings.confirm_timeout_seconds
        view = ConfirmView(self, request, channel, interaction.locale, timeout)
        text = tr(
            interaction.locale,
            "This video costs more than {threshold} credits, so it waits for your Confirm.\n{costs}\n"
            "Nothing is reserved until you press Confirm; this question expires {expires}.",
            threshold=format_credits(threshold),
            costs=await self.cost_line(interaction, cost),
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
        """True where no thread can be opened (inside a thread or a forum post): the job is posted in place."""
        return isinstance(channel, discord.Thread) or getattr(channel, "type", None) in THREAD_TYPES

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
            return await channel.get_partial_message(card.id).create_thread(
                name=thread_name(job), auto_archive_duration=1440
            )
        except (discord.HTTPException, ValueError) as exc:
            log.info("job %s: no thread in channel %s (%s); posting in place", job.id, interaction.channel_id, exc)
            return None

    # --- buttons ----------------------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """The same prompt and options as a new job of whoever pressed the button; presses of one member on one
        video that arrive while the first is starting (a double click) make no second job."""
        press = (job_id, interaction.user.id)
        if press in self.rerolling:  # checked and set before any await: presses together cannot both pass
            await reply_ephemeral(interaction, tr(interaction.locale, ALREADY_ANSWERED))
            return
        self.rerolling.add(press)
        try:
            await self._reroll(interaction, job_id)
        finally:
            self.rerolling.discard(press)

    async def _reroll(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        original = await self.jobs.get(job_id)
        if original is None or original.guild_id != interaction.guild_id:
            await reply_ephemeral(interaction, tr(interaction.locale, "That video's job is no longer known to me."))
            return

        async def build() -> JobRequest:
            frame = None
            if original.image_sha256:
                frame = await self.jobs.first_frame(original)
                if frame is None:
                    raise InvalidRequest(english("The first frame of that video is no longer stored."))
            return self.request(
                interaction,
                original.kind,  # type: ignore[arg-type]
                original.prompt,
                duration=original.duration,
                resolution=original.resolution,
                aspect_ratio=original.aspect_ratio if original.kind == "text" else None,
                image=frame,
                image_url=original.image_url,
                image_source=original.image_source,
                parent_id=original.parent_id,  # a re-rolled segment is another take of the same segment
            )

        # A new card belongs beside the original one, so it can have its own thread.
        parent = self.bot.get_channel(original.channel_id) if original.channel_id else None
        try:
            await self.start_job(interaction, build, channel=parent)  # type: ignore[arg-type]
        except UserFacingError as exc:
            await reply_ephemeral(interaction, str(exc))

    async def delete_video(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Remove the video message, if the presser asked for it or moderates the channel."""
        job = await self.jobs.get(job_id)
        owner = job is not None and job.user_id == interaction.user.id
        if not owner and not is_moderator(interaction):
            await reply_ephemeral(
                interaction,
                tr(interaction.locale, "Only the member who asked for this video or a moderator can delete it."),
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            assert interaction.message is not None
            await interaction.message.delete()
        except discord.HTTPException as exc:
            log.warning("job %s: delete failed: %s", job_id, exc)
            await interaction.followup.send(tr(interaction.locale, "I could not delete that message."), ephemeral=True)
            return
        log.info("job %s: video message deleted by %s", job_id, interaction.user.id)
        await interaction.followup.send(tr(interaction.locale, "Deleted."), ephemeral=True)

    # --- chains: Continue and Join ---------------------------------------------------------------------------

    async def continue_video(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Ask for the next segment's prompt and duration (the job is made when the form is sent)."""
        parent = await self.jobs.get(job_id)
        if parent is None or parent.guild_id != interaction.guild_id:
            await reply_ephemeral(interaction, tr(interaction.locale, "That video's job is no longer known to me."))
            return
        if parent.video_url is None:
            await reply_ephemeral(interaction, tr(interaction.locale, "That video has no link to continue from."))
            return
        await interaction.response.send_modal(ContinueModal(self, parent, interaction.locale))

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

    async def join_chain(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Post the segments from the first to this one as one video, here. Nothing is charged; one Join per chain
        at a time, and one per member every JOIN_COOLDOWN_SECONDS."""
        locale = interaction.locale
        job = await self.jobs.get(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            await reply_ephemeral(interaction, tr(locale, "That video's job is no longer known to me."))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        chain = await self.jobs.chain(job)
        if len(chain) < 2:
            await reply_ephemeral(
                interaction, tr(locale, "This video continues no other, so there is nothing to join.")
            )
            return
        # From here to the `add` nothing awaits: two presses at once cannot both pass.
        root, member = chain[0].id, (job.guild_id or 0, interaction.user.id)
        if root in self.joining:
            await reply_ephemeral(
                interaction, tr(locale, "This chain's joined video is being made; it will be posted here.")
            )
            return
        wait = self._join_cooldown_left(member)
        if wait > 0:
            when = f"<t:{int(time.time() + wait) + 1}:R>"  # Discord shows "in 2 minutes", in their language
            await reply_ephemeral(
                interaction,
                tr(locale, "Each member can start one Join every {seconds} s; you can press Join again {when}.",
                   seconds=f"{self.bot.settings.join_cooldown_seconds:.0f}", when=when),
            )  # fmt: skip
            return
        self.joining.add(root)
        self.joined_at[member] = time.monotonic()
        try:
            answer = await self._post_joined(interaction, chain)
        finally:
            self.joining.discard(root)
        await reply_ephemeral(interaction, answer)

    def _join_cooldown_left(self, member: tuple[int, int]) -> float:
        """Seconds before this member may start another Join (0 if now); forgets the cooldowns that ran out."""
        cooldown, now = self.bot.settings.join_cooldown_seconds, time.monotonic()
        for key in [key for key, at in self.joined_at.items() if now - at >= cooldown]:
            del self.joined_at[key]
        at = self.joined_at.get(member)
        return 0.0 if at is None else cooldown - (now - at)

    async def _post_joined(self, interaction: discord.Interaction[Any], chain: list[Job]) -> str:
        """Fetch, join and post the chain; returns what to tell the member."""
        locale, limit, settings = interaction.locale, interaction.filesize_limit, self.bot.settings
        root = chain[0].id[:8]
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            return tr(locale, "I cannot post the joined video here.")
        too_big = tr(
            locale,
            "The joined video would be larger than this server's upload limit of {limit} MB, so it was not "
            "posted; the segments stay as they are.",
            limit=f"{limit / 1024 / 1024:.0f}",
        )
        with tempfile.TemporaryDirectory(prefix="join-") as folder:
            paths: list[Path] = []
            fetched = 0
            for number, segment in enumerate(chain, 1):
                path = Path(folder) / f"{number:03d}.mp4"
                try:
                    if segment.video_url is None:
                        raise DownloadFailed("it has no video link")
                    # Copied segments add up to the joined file: once they pass the limit, fetch no more.
                    fetched += await download_video(
                        self.bot.resources.session, segment.video_url, path, max_bytes=limit - fetched
                    )
                except VideoTooLarge:
                    return too_big
                except DownloadFailed as exc:
                    log.info("join of %s: segment %d (%s) unavailable: %s", root, number, segment.id, exc)
                    return tr(
                        locale,
                        "Segment {number} (`{job}`) can no longer be downloaded ({reason}), so nothing was joined.",
                        number=number,
                        job=segment.id[:8],
                        reason=str(exc),
                    )
                paths.append(path)
            joined_path = Path(folder) / f"joined-{root}.mp4"
            unreadable = tr(locale, "The segments could not be joined: one of them is not a readable video.")
            try:
                plan = await clips.plan_join(paths)
            except clips.ClipError as exc:
                log.warning("join of %s failed: %s", root, exc)
                return unreadable
            # Refused before any work when it would take too long or could not be posted.
            if plan.how == "reencode" and plan.frames > settings.join_max_frames:
                log.info("join of %s refused: %d frames to re-encode", root, plan.frames)
                return tr(
                    locale,
                    "These segments differ, so joining them means re-encoding {frames} frames, more than the "
                    "{limit} allowed here; nothing was joined, and the segments stay as they are.",
                    frames=plan.frames,
                    limit=settings.join_max_frames,
                )
            if plan.estimated_bytes > limit:
                log.info("join of %s refused: about %d bytes (%s)", root, plan.estimated_bytes, plan.how)
                return too_big
            try:
                joined = await clips.join(plan, joined_path, threads=settings.join_encode_threads)
            except clips.ClipError as exc:
                log.warning("join of %s failed: %s", root, exc)
                return unreadable
            if joined_path.stat().st_size > limit:
                return too_big
            log.info(
                "chain %s: %d segments joined (%s, %.1f s, %.1f s of CPU)",
                root, len(chain), joined.how, joined.seconds, joined.cpu_seconds,
            )  # fmt: skip
            try:
                await channel.send(
                    tr(locale, "The {count} segments of `{root}`, joined ({seconds} s).",
                       count=len(chain), root=root, seconds=f"{joined.seconds:.1f}"),
                    file=discord.File(joined_path, filename=joined_path.name),
                    allowed_mentions=discord.AllowedMentions.none(),
                )  # fmt: skip
            except discord.HTTPException as exc:
                if exc.status == 413:
                    return too_big
                log.warning("chain %s: the joined video could not be posted: %s", root, exc)
                return tr(locale, "I could not post the joined video here.")
        return tr(locale, "Joined {count} segments; the video is posted below.", count=len(chain))

    async def _chain_note(self, job: Job, locale: object) -> str:
        """` · segment 2 of abcd1234` for a job that continues another, else nothing."""
        if job.parent_id is None:
            return ""
        chain = await self.jobs.chain(job)
        return tr(locale, " · segment {number} of `{root}`", number=len(chain), root=chain[0].id[:8])

    # --- status texts -----------------------------------------------------------------------------------

    async def _find_job(self, interaction: discord.Interaction[Any], prefix: str) -> Job:
        assert interaction.guild_id is not None
        job = await self.jobs.find(interaction.guild_id, prefix, user_id=interaction.user.id)
        if job is None:
            shown = discord.utils.escape_markdown(prefix.strip()[:16])
            raise UserFacingError(
                tr(interaction.locale, "You have no job starting with `{prefix}` here.", prefix=shown)
            )
        return job

    def _where(self, job: Job, locale: object) -> str:
        if job.thread_id:
            return f"<#{job.thread_id}>"
        if job.message_id and job.channel_id and job.guild_id:
            return f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.message_id}"
        return tr(locale, "no thread")

    def _job_line(self, job: Job, now: float, locale: object) -> str:
        return tr(
            locale,
            "• `{id}` {state}, {elapsed} elapsed · {where}",
            id=job.id[:8],
            state=job_state(job, locale),
            elapsed=clock(now - (job.submitted_at or job.created_at)),
            where=self._where(job, locale),
        )

    def _job_details(self, job: Job, now: float, locale: object) -> str:
        started = f"<t:{int(job.created_at)}:R>"
        lines = [
            tr(locale, "**Job `{id}`**: {state}", id=job.id[:8], state=job_state(job, locale)),
            tr(
                locale,
                "{options} · started {started} · {where}",
                options=options_line(job, locale),
                started=started,
                where=self._where(job, locale),
            ),
            tr(
                locale,
                "Prompt: {prompt}",
                prompt=discord.utils.escape_markdown(job.prompt[:300]) or tr(locale, "(none)"),
            ),
        ]
        if job.status in ("submitted", "processing"):
            lines.append(tr(locale, "Elapsed: {elapsed}", elapsed=clock(now - (job.submitted_at or job.created_at))))
        if job.error:
            lines.append(tr(locale, "Reason: {reason}", reason=translated(locale, job.error)))
        if job.status == "rejected":
            reason = discord.utils.escape_markdown(job.review_reason or "") or tr(locale, "no reason given")
            lines.append(tr(locale, "Rejected by a moderator: {reason}", reason=reason))
        if job.status == "undeliverable" and job.video_url:
            lines.append(tr(locale, "Video link (expires): {url}", url=job.video_url))
        return fit_lines(lines[0], lines[1:], locale=locale)

    def _history_line(self, job: Job, locale: object) -> str:
        line = tr(
            locale,
            "• `{id}` {date} {state} · {options} · {prompt} · {where}",
            id=job.id[:8],
            date=f"<t:{int(job.created_at)}:d>",
            state=job_state(job, locale),
            options=options_line(job, locale),
            prompt=discord.utils.escape_markdown(job.prompt[:60]) or tr(locale, "(no prompt)"),
            where=self._where(job, locale),
        )
        if job.status == "undeliverable" and job.video_url:
            line += " · " + tr(locale, "[video link]({url})", url=job.video_url)
        return line


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(VideoCog(bot))
