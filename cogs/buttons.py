"""The buttons under a video: Re-roll, Edit, Delete, Continue and Join (their items are in `cogs/views.py`)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import discord
from discord.ext import commands

from bot.app import UserFacingError, VideoBot, refused_here, reply_ephemeral
from bot.core.credits import PERSONAL
from bot.core.i18n import tr
from bot.core.jobs import JobRequest, JobService
from bot.core.model import Job
from bot.media import clips
from bot.media.downloads import DownloadFailed, VideoTooLarge, download_video
from cogs.forms import ALREADY_ANSWERED, ContinueModal, EditModal
from cogs.making import MakingVideos, loaded_cog, spends_for
from cogs.views import ContinueButton, DeleteButton, EditButton, JoinButton, RerollButton, is_moderator

log = logging.getLogger(__name__)


class VideoButtons(commands.Cog):
    """What the buttons under a video do; Re-roll and Continue make their jobs through `MakingVideos`."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs: JobService = bot.resources.jobs
        self.rerolling: set[tuple[str, int]] = set()  # (video's job id, member) of the re-rolls starting now
        # Joins in this process: the chains (by their first job) being joined, and when each member (server, user)
        # last started one. A chain's buttons are in one server, so one process hears all of its presses.
        self.joining: set[str] = set()
        self.joined_at: dict[tuple[int, int], float] = {}

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(RerollButton, EditButton, DeleteButton, ContinueButton, JoinButton)
        clips.start_joins(self.bot.settings.join_processes)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(RerollButton, EditButton, DeleteButton, ContinueButton, JoinButton)
        clips.stop_joins()

    async def _pressed(self, interaction: discord.Interaction[Any], job_id: str) -> Job | None:
        """The job whose button was pressed, if this press may act on it (`spends_for`); else the presser is told
        why and None. A press in the bot's DM spends the personal quota only when the owner turned it on."""
        job = await self.jobs.get(job_id)
        scope = None if job is None else spends_for(interaction, job)
        if scope in (None, PERSONAL) and (refusal := refused_here(interaction)) is not None:  # no server's video
            await reply_ephemeral(interaction, tr(interaction.locale, refusal))
            return None
        if scope is None:
            await reply_ephemeral(interaction, tr(interaction.locale, "That video's job is no longer known to me."))
            return None
        return job

    # --- Re-roll and Delete ---------------------------------------------------------------------------

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
        original = await self._pressed(interaction, job_id)
        if original is None:
            return

        making = loaded_cog(self.bot, MakingVideos)

        async def build() -> JobRequest:
            return await making.again(interaction, original)

        try:
            # Answered once reserved; the press stays in `rerolling` until the card is posted and the job sent.
            await making.start_job(interaction, build, channel=making.home_of(original), answer_first=True)
        except UserFacingError as exc:
            await reply_ephemeral(interaction, str(exc))

    async def edit_video(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Show the Edit form, prefilled with the video's prompt, duration and sound (the job is made when it is
        sent, as the presser's)."""
        original = await self._pressed(interaction, job_id)
        if original is None:
            return
        await interaction.response.send_modal(
            EditModal(loaded_cog(self.bot, MakingVideos), original, interaction.locale)
        )

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
        parent = await self._pressed(interaction, job_id)
        if parent is None:
            return
        if parent.video_url is None:
            await reply_ephemeral(interaction, tr(interaction.locale, "That video has no link to continue from."))
            return
        await interaction.response.send_modal(
            ContinueModal(loaded_cog(self.bot, MakingVideos), parent, interaction.locale)
        )

    async def join_chain(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Post the segments from the first to this one as one video, here (a private chain's, to the presser
        only). Nothing is charged; one Join per chain at a time, and one per member every JOIN_COOLDOWN_SECONDS."""
        locale = interaction.locale
        job = await self._pressed(interaction, job_id)
        if job is None:
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
            text = tr(locale, "The {count} segments of `{root}`, joined ({seconds} s).",
                      count=len(chain), root=root, seconds=f"{joined.seconds:.1f}")  # fmt: skip
            file, none = discord.File(joined_path, filename=joined_path.name), discord.AllowedMentions.none()
            try:
                if any(segment.private for segment in chain):  # nothing public: only the presser sees it
                    await interaction.followup.send(text, file=file, allowed_mentions=none, ephemeral=True)
                else:
                    await channel.send(text, file=file, allowed_mentions=none)
            except discord.HTTPException as exc:
                if exc.status == 413:
                    return too_big
                log.warning("chain %s: the joined video could not be posted: %s", root, exc)
                return tr(locale, "I could not post the joined video here.")
        return tr(locale, "Joined {count} segments; the video is posted below.", count=len(chain))


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(VideoButtons(bot))
