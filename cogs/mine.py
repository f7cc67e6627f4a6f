"""The member's own views: /video status, /video history, /video cancel and /video notify (declared in
`cogs/video.py`, which hands each to this cog)."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import UserFacingError, VideoBot, allowed_here, quota_scope
from bot.core.i18n import tr, translated
from bot.core.jobs import InvalidRequest, JobService
from bot.core.model import OPEN, WAITING, Job
from cogs.messages import cancel_text, clock, fit_lines, job_state, jump_link, options_line
from cogs.views import PagedView, is_moderator

HISTORY_PAGE = 5
log = logging.getLogger(__name__)


class MemberViews(commands.Cog):
    """What a member sees of their own jobs, and how they are told a video is done."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs: JobService = bot.resources.jobs

    @commands.Cog.listener()
    async def on_app_command_completion(self, interaction: discord.Interaction[Any], command: Any) -> None:
        """After any command: tell the member, once, of the private videos that reached no one (closed DMs), in one
        follow-up (a user install outside the bot's servers has five per command). In a DM, of those on the
        personal quota."""
        untold = await self.jobs.untold_unreached(quota_scope(interaction), interaction.user.id)
        lines = [
            tr(
                interaction.locale,
                "Your private video `{id}` could not reach you: your direct messages are closed. "
                "Find it in /video status {id}.",
                id=job.id[:8],
            )
            for job in untold
        ]
        if not lines:
            return
        try:
            await interaction.followup.send(fit_lines(lines[0], lines[1:], locale=interaction.locale), ephemeral=True)
        except discord.HTTPException as exc:
            # Already marked told; their links stay in /video status either way.
            log.info("jobs %s: could not tell their member they reached no one: %s", [j.id for j in untold], exc)

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

    async def status(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        now = time.time()
        if job:
            found = await self._find_job(interaction, job)
            text = self._job_details(found, now, interaction.locale)
        else:
            jobs = await self.jobs.member_jobs(quota_scope(interaction), interaction.user.id, statuses=OPEN, limit=25)
            locale = interaction.locale
            if not jobs:
                text = tr(locale, "You have no videos in progress. Start one with `/video text` or `/video image`.")
            else:
                lines = [self._job_line(j, now, locale) for j in jobs]
                text = fit_lines(tr(locale, "**Your videos in progress**"), lines, locale=locale)
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    async def cancel(self, interaction: discord.Interaction[Any], job: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        moderator = is_moderator(interaction)
        user_id = None if moderator else interaction.user.id
        found = await self.jobs.find(quota_scope(interaction), job, user_id=user_id, statuses=WAITING)
        if found is None:
            raise UserFacingError(tr(interaction.locale, "There is no job waiting to be sent with that id here."))
        try:
            cancelled = await self.jobs.cancel(
                found.id,
                guild_id=quota_scope(interaction),
                user_id=interaction.user.id,
                moderator=is_moderator(interaction),
            )
        except InvalidRequest as exc:
            raise UserFacingError(translated(interaction.locale, str(exc))) from None
        self.bot.dispatch("job_changed", cancelled)
        await interaction.followup.send(cancel_text(cancelled, interaction.locale), ephemeral=True)

    async def job_choices(
        self, interaction: discord.Interaction[Any], current: str, statuses: tuple[str, ...] | None
    ) -> list[app_commands.Choice[str]]:
        """The member's jobs whose id starts with what they typed (Discord allows 100 characters a name)."""
        if not allowed_here(interaction):
            return []
        jobs = await self.jobs.member_jobs(quota_scope(interaction), interaction.user.id, statuses=statuses, limit=25)
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=f"{j.id[:8]} · {job_state(j, interaction.locale)} · {j.prompt}"[:100], value=j.id)
            for j in jobs
            if j.id.startswith(typed)
        ]

    async def history(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, user_id = quota_scope(interaction), interaction.user.id
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

    async def _chain_note(self, job: Job, locale: object) -> str:
        """` · segment 2 of abcd1234` for a job that continues another, else nothing."""
        if job.parent_id is None:
            return ""
        chain = await self.jobs.chain(job)
        return tr(locale, " · segment {number} of `{root}`", number=len(chain), root=chain[0].id[:8])

    # --- status texts -----------------------------------------------------------------------------------

    async def _find_job(self, interaction: discord.Interaction[Any], prefix: str) -> Job:
        job = await self.jobs.find(quota_scope(interaction), prefix, user_id=interaction.user.id)
        if job is None:
            shown = discord.utils.escape_markdown(prefix.strip()[:16])
            raise UserFacingError(
                tr(interaction.locale, "You have no job starting with `{prefix}` here.", prefix=shown)
            )
        return job

    def _where(self, job: Job, locale: object) -> str:
        if job.thread_id:
            return f"<#{job.thread_id}>"
        if job.message_id and job.channel_id:
            return jump_link(job.guild_id, job.channel_id, job.message_id)
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
        if job.edited_from:
            line += " · " + tr(locale, "edited from `{job}`", job=job.edited_from[:8])
        if job.status == "undeliverable" and job.video_url:
            line += " · " + tr(locale, "[video link]({url})", url=job.video_url)
        return line


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(MemberViews(bot))
