"""The forms that make a job (Animate image, Continue, Edit) and the one-shot questions about one job (Confirm,
Queue it).

They start their jobs through the making cog (`cogs/making.py`)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord

from bot.app import SOMETHING_WENT_WRONG, UserFacingError, reply_ephemeral
from bot.core.i18n import english, tr
from bot.core.jobs import MAX_PROMPT, InvalidRequest, JobRequest
from bot.core.model import Job
from cogs.frames import read_first_frame

if TYPE_CHECKING:
    from cogs.making import MakingVideos

log = logging.getLogger(__name__)

# A second press of a button that spends (or a second send of a form): the first one made the only job.
ALREADY_ANSWERED = english("This was already confirmed or cancelled; nothing more was reserved or charged.")


class JobForm(discord.ui.Modal):
    """A form that makes a job: a prompt and a duration (and what a subclass adds), in the member's language.

    The inputs are made here, not as class attributes: their labels can only be set, without a deprecation
    warning, when they are made."""

    def __init__(
        self,
        cog: MakingVideos,
        *,
        title: str,
        placeholder: str,
        duration: int,
        locale: object,
        kind: str = "image",
        prompt: str = "",
    ) -> None:
        super().__init__(title=title)
        self.cog = cog
        self.prompt: discord.ui.TextInput[JobForm] = discord.ui.TextInput(
            label=tr(locale, "Prompt") if kind == "text" else tr(locale, "Prompt (optional)"),
            style=discord.TextStyle.paragraph,
            required=kind == "text",  # a text video needs one (the intake refuses an empty one all the same)
            max_length=MAX_PROMPT[kind],
            placeholder=placeholder,
            default=prompt or None,
        )
        self.duration: discord.ui.TextInput[JobForm] = discord.ui.TextInput(
            label=tr(locale, "Duration in seconds (3-15)"), default=str(duration), max_length=2
        )
        self.add_item(self.prompt)
        self.add_item(self.duration)
        self.sound: discord.ui.TextInput[JobForm] | None = None
        self.sent = False

    def add_sound(self, locale: object, default: str | None = None) -> None:
        """The sound choice (on / off; empty: the server's default), unless the video service takes none; a form
        that makes a job (Edit too) adds it last and reads it with `chosen_sound`."""
        if not self.cog.jobs.takes_sound:  # not offered as if it worked
            return
        self.sound = discord.ui.TextInput(
            label=tr(locale, "Sound (on or off; empty: the default)"), default=default or "", required=False,
            max_length=3,
        )  # fmt: skip
        self.add_item(self.sound)

    def chosen_sound(self) -> str | None:
        """The sound typed in the form (None: not chosen); a word other than on or off is refused by the intake."""
        word = self.sound.value.strip().lower() if self.sound is not None else ""
        return word or None

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

    def __init__(self, cog: MakingVideos, attachment: discord.Attachment, locale: object = None) -> None:
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
        self.add_sound(locale)

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
                sound=self.chosen_sound(),
                image=frame,
                image_source=source,
                frame_url=url,
            )

        await self.cog.start_job(interaction, build)


class ContinueModal(JobForm):
    """Asks for the next segment's prompt and duration; its first frame is the delivered video's last frame."""

    def __init__(self, cog: MakingVideos, parent: Job, locale: object) -> None:
        super().__init__(
            cog,
            title=tr(locale, "Continue the video"),
            placeholder=tr(locale, "What happens next"),
            duration=cog.bot.settings.default_duration,
            locale=locale,
        )
        self.parent = parent
        self.add_sound(locale, parent.sound)  # the chain's sound as before, unless changed: Join can copy it

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
                sound=self.chosen_sound(),
                image=frame,
                image_source=f"last frame of {self.parent.id[:8]}",
                parent_id=self.parent.id,
                **await self.cog.press_fields(interaction, self.parent),
            )

        # The next segment goes where this video is (its thread): no new thread.
        await self.cog.start_job(interaction, build)


class EditModal(JobForm):
    """Edit under a video: its prompt, duration and sound prefilled; the answer is a new job of whoever sends it,
    with the original's other options and frames, posted beside the original's card."""

    def __init__(self, cog: MakingVideos, original: Job, locale: object) -> None:
        super().__init__(
            cog,
            title=tr(locale, "Edit the video"),
            placeholder=tr(locale, "What happens in the video"),
            duration=original.duration,
            locale=locale,
            kind=original.kind,
            prompt=original.prompt,
        )
        self.original = original
        self.add_sound(locale, original.sound)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        async def build() -> JobRequest:
            return await self.cog.again(
                interaction,
                self.original,
                prompt=self.prompt.value,
                duration=self.chosen_duration(),
                sound=self.chosen_sound(),
                edited_from=self.original.id,
            )

        await self.cog.start_job(interaction, build, channel=self.cog.home_of(self.original))


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

    def __init__(self, cog: MakingVideos, request: JobRequest, channel: discord.abc.Messageable) -> None:
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
        self, cog: MakingVideos, request: JobRequest, channel: discord.abc.Messageable, locale: Any, timeout: float
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
