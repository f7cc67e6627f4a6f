"""The /video command group: every subcommand's name, description and options, in one place (one group of
Discord's can only be defined in one cog). Each subcommand hands its options to the cog for what the member does:
`MakingVideos` (`cogs/making.py`) makes videos, `MemberViews` (`cogs/mine.py`) shows the member's own jobs."""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.app import EVERYWHERE, GUILD_AND_USER_INSTALLS, VideoBot
from bot.core.model import WAITING
from bot.core.options import option, takes_frame
from cogs.making import MakingVideos, loaded_cog
from cogs.mine import MemberViews

# The options' values as Discord offers them, from their declaration (bot/core/options.py).
SHORTEST, LONGEST = min(option("duration").allowed), max(option("duration").allowed)
SOUND_HELP = "on or off; not chosen: the server's default, else the video service's (with sound)"
PRIVATE_HELP = "True: nothing public; the video comes to you by direct message"
IMAGE_DESCRIPTION = "Make a video that starts from your image"
IMAGE_HELP = {
    "image": "The first frame: a JPG, PNG or WebP image, at least 300 px a side",
    "prompt": "What happens in the video (optional, up to 2500 characters)",
    "resolution": "720p (default) or 1080p; 1080p costs more credits",
    "duration": "Length in seconds, 3 to 15 (default 5)",
    "sound": SOUND_HELP,
    "private": PRIVATE_HELP,
}


def choices(name: str) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=str(value), value=value) for value in option(name).allowed]


class VideoCommands(commands.Cog):
    """The /video group; the work is done in the cogs it hands each subcommand to."""

    video = app_commands.Group(
        name="video",
        description="Make short videos with Kling",
        allowed_contexts=EVERYWHERE,
        allowed_installs=GUILD_AND_USER_INSTALLS,
    )

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        if takes_frame(bot.settings.kling_model, "end_image"):
            # The model takes a last frame: `/video image` offers `end_image` (with turbo it is not offered at all).
            self.video.remove_command("image")
            self.video.add_command(
                app_commands.Command(name="image", description=IMAGE_DESCRIPTION, callback=self.image_with_end)
            )

    def making(self) -> MakingVideos:
        return loaded_cog(self.bot, MakingVideos)

    def mine(self) -> MemberViews:
        return loaded_cog(self.bot, MemberViews)

    @video.command(name="text", description="Make a video from a text prompt")
    @app_commands.describe(
        prompt="What the video shows (up to 3072 characters)",
        aspect_ratio="The shape of the video (default 16:9)",
        resolution="720p (default) or 1080p; 1080p costs more credits",
        duration="Length in seconds, 3 to 15 (default 5)",
        sound=SOUND_HELP,
        private=PRIVATE_HELP,
    )
    @app_commands.choices(
        aspect_ratio=choices("aspect_ratio"), resolution=choices("resolution"), sound=choices("sound")
    )
    async def text(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 3072],
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        duration: app_commands.Range[int, SHORTEST, LONGEST] | None = None,
        sound: str | None = None,
        private: bool = False,
    ) -> None:
        await self.making().from_text(
            interaction,
            prompt,
            private,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            duration=duration,
            sound=sound,
        )

    @video.command(name="image", description=IMAGE_DESCRIPTION)
    @app_commands.describe(**IMAGE_HELP)
    @app_commands.choices(resolution=choices("resolution"), sound=choices("sound"))
    async def image(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2500] | None = None,
        resolution: str | None = None,
        duration: app_commands.Range[int, SHORTEST, LONGEST] | None = None,
        sound: str | None = None,
        private: bool = False,
    ) -> None:
        # A command synced while KLING_MODEL took a last frame may still send `end_image`: the intake refuses it
        # clearly (nothing charged) rather than the job going without it.
        stale = getattr(interaction.namespace, "end_image", None)
        await self.image_with_end(interaction, image, prompt, resolution, duration, sound, private, end_image=stale)

    # `/video image` for a model that takes a last frame (`takes_frame`): put in place of `image` by `__init__`.
    @app_commands.describe(
        **IMAGE_HELP,
        end_image=locale_str("The last frame (optional): a JPG, PNG or WebP image, at least 300 px a side"),
    )
    @app_commands.rename(end_image=locale_str("end_image"))
    @app_commands.choices(resolution=choices("resolution"), sound=choices("sound"))
    async def image_with_end(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2500] | None = None,
        resolution: str | None = None,
        duration: app_commands.Range[int, SHORTEST, LONGEST] | None = None,
        sound: str | None = None,
        private: bool = False,
        end_image: discord.Attachment | None = None,
    ) -> None:
        await self.making().from_image(
            interaction,
            image,
            private,
            prompt=prompt,
            end_image=end_image,
            resolution=resolution,
            duration=duration,
            sound=sound,
        )

    @video.command(name="notify", description="How you are told that your video is done")
    @app_commands.describe(mode="mention: in the video's thread (default) · dm: a direct message · off: neither")
    async def notify(self, interaction: discord.Interaction[Any], mode: Literal["mention", "dm", "off"]) -> None:
        await self.mine().notify(interaction, mode)

    @video.command(name="status", description="Your videos in progress, or one job in detail")
    @app_commands.describe(job="A job id (the first characters are enough)")
    async def status(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        await self.mine().status(interaction, job)

    @status.autocomplete("job")
    async def _status_job_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self.mine().job_choices(interaction, current, None)

    @video.command(name="cancel", description="Cancel a job that is still waiting in the queue")
    @app_commands.describe(job="The job id (the first characters are enough)")
    async def cancel(self, interaction: discord.Interaction[Any], job: str) -> None:
        await self.mine().cancel(interaction, job)

    @cancel.autocomplete("job")
    async def _cancel_job_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self.mine().job_choices(interaction, current, WAITING)

    @video.command(name="history", description="Your recent videos")
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        await self.mine().history(interaction)


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(VideoCommands(bot))
