"""`/quota` for every member; `/quota-admin` for moderators (Manage Server, checked again at run time)."""

from __future__ import annotations

import io
import logging
from datetime import datetime
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VideoBot, quota_scope, reply_ephemeral
from bot.core.credits import PERSONAL, CreditService, QuotaStatus
from bot.core.i18n import english, tr, translated
from bot.core.model import AuditEntry, Job
from bot.core.quota import Period, format_credits
from bot.core.review import ReviewRefused
from bot.serving.chart import draw_usage_chart
from cogs.delivery import Deliverer
from cogs.messages import fit_lines, state_word
from cogs.views import REVIEW_BUTTONS, PagedView

log = logging.getLogger(__name__)

AUDIT_PAGE = 10
SOURCES = {  # English message ids
    "blocked": english("you are blocked"),
    "override": english("set for you"),
    "role": english("from your role"),
    "default": english("server default"),
}

PERSONAL_QUOTA_TITLE = english(
    "**Your personal credits**: for videos made in my direct messages, set by the bot's owner, apart from any "
    "server's credits."
)

SOUND_DEFAULTS = {  # English message ids, by the server's sound default
    "on": english("with sound"),
    "off": english("silent"),
    None: english("the video service's default (with sound)"),
}


def millicredits(amount: float) -> int:
    """Credits as typed by a moderator, kept exactly as milli-credits."""
    return round(amount * 1000)


def member_roles(user: discord.abc.User) -> tuple[int, ...]:
    """The ids of a member's roles (none for a user outside a server)."""
    return tuple(role.id for role in user.roles) if isinstance(user, discord.Member) else ()


def timestamp(moment: datetime | None, locale: object = None) -> str:
    """A time every reader sees in their own zone."""
    return f"<t:{int(moment.timestamp())}:f>" if moment else tr(locale, "never (the limit is for all time)")


def describe_status(status: QuotaStatus, credits: CreditService, who: str | None = None, locale: object = None) -> str:
    """The text of `/quota` (and of `/quota-admin show`)."""
    who = who or tr(locale, "You")
    limit = status.limit
    if limit.source == "blocked":
        reason = limit.reason or tr(locale, "no reason given")
        return tr(locale, "{who} may not make videos in this server: {reason}.", who=who, reason=reason)
    where = tr(locale, SOURCES[limit.source]) + (f" <@&{limit.role_id}>" if limit.role_id else "")
    lines = [
        tr(
            locale,
            "**Credits** ({period} period, resets {when})",
            period=tr(locale, status.settings.period),
            when=timestamp(status.window.reset_at, locale),
        )
    ]
    if limit.millicredits is None:
        lines.append(tr(locale, "Limit: unlimited ({where})", where=where))
    else:
        lines.append(
            tr(
                locale,
                "Limit: {limit} ({where})",
                limit=translated(locale, credits.describe(limit.millicredits)),
                where=where,
            )
        )
    if status.granted:
        lines.append(tr(locale, "Bonus granted this period: {amount}", amount=format_credits(status.granted)))
    lines.append(
        tr(
            locale,
            "Used: {used} · reserved by jobs in progress: {reserved}",
            used=format_credits(status.used),
            reserved=format_credits(status.reserved),
        )
    )
    left = (
        tr(locale, "unlimited") if status.remaining is None else translated(locale, credits.describe(status.remaining))
    )
    lines.append(tr(locale, "Left: {left}", left=left))
    lines.append(
        tr(
            locale,
            "Jobs in progress: {count} of {limit}",
            count=status.in_flight,
            limit=status.settings.member_in_flight,
        )
    )
    sound = SOUND_DEFAULTS[status.settings.sound_default]
    lines.append(tr(locale, "Sound when not chosen: {sound}", sound=tr(locale, sound)))
    return "\n".join(lines)


def describe_audit(entry: AuditEntry, locale: object = None) -> str:
    """One audit line: when, who, what, on whom, before → after, why."""
    channels = ("log-channel", "review")
    target = f" <@{entry.target_id}>" if entry.target_id and entry.action not in ("role", *channels) else ""
    if entry.action == "role" and entry.target_id:
        target = f" <@&{entry.target_id}>"
    before, after = entry.before, entry.after
    if entry.action in channels:  # the core records channel ids; Discord shows them as links
        before, after = (f"<#{v}>" if v and v.isdigit() else v for v in (before, after))
    before, after = (translated(locale, v) if v else v for v in (before, after))  # the core records English
    action = tr(locale, entry.action)  # the command's name, as Discord shows it in this language
    line = f"<t:{int(entry.created_at)}:f> <@{entry.moderator_id}> **{action}**{target}: {before} → {after}"
    return line + (f" ({discord.utils.escape_markdown(entry.reason)})" if entry.reason else "")


class AdminGroup(app_commands.Group):
    """Moderators only: Discord's default permission can be changed by an admin, so check again here."""

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            raise app_commands.MissingPermissions(["manage_guild"])
        return True


class QuotaCog(commands.Cog):
    """Quota commands; every answer is private and every moderator change is audited and logged."""

    admin = AdminGroup(
        name="quota-admin",
        description="Moderators: see and change members' video credits",
        guild_only=True,
        # A server's own tool: only in a server the bot is installed to, never through a member's user install.
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        allowed_installs=app_commands.AppInstallationType(guild=True),
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.credits = bot.resources.credits
        self.jobs = bot.resources.jobs
        self.reviews = bot.resources.review

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*REVIEW_BUTTONS)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*REVIEW_BUTTONS)

    @app_commands.command(
        name="quota",
        description="Your video credits in this server (in my DMs: your own)",
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    @app_commands.allowed_installs(guilds=True, users=True)
    async def quota(self, interaction: discord.Interaction[Any]) -> None:
        scope = quota_scope(interaction)
        status = await self.credits.status(scope, interaction.user.id, member_roles(interaction.user))
        text = describe_status(status, self.credits, locale=interaction.locale)
        if scope == PERSONAL:
            text = tr(interaction.locale, PERSONAL_QUOTA_TITLE) + "\n" + text
        await self._reply(interaction, text)

    async def _reply(self, interaction: discord.Interaction[Any], text: str, **kwargs: Any) -> None:
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none(), **kwargs
        )

    async def _done(self, interaction: discord.Interaction[Any], entry: AuditEntry) -> None:
        text = describe_audit(entry, interaction.locale)
        await self._reply(interaction, tr(interaction.locale, "Done. {change}", change=text))
        await self.bot.post_log(entry.guild_id, f"🛡️ {describe_audit(entry, self.bot.server_locale(entry.guild_id))}")

    def _guild(self, interaction: discord.Interaction[Any]) -> int:
        assert interaction.guild_id is not None
        return interaction.guild_id

    @admin.command(name="show", description="A member's credits and where their limit comes from")
    @app_commands.describe(member="The member to look at")
    async def show(self, interaction: discord.Interaction[Any], member: discord.Member) -> None:
        status = await self.credits.status(self._guild(interaction), member.id, member_roles(member))
        locale = interaction.locale
        text = describe_status(status, self.credits, tr(locale, "They"), locale)
        await self._reply(interaction, f"{member.mention}\n" + text)

    @admin.command(name="set", description="Give a member their own limit per period")
    @app_commands.describe(member="The member", limit="Credits per period")
    async def set_limit(
        self, interaction: discord.Interaction[Any], member: discord.Member, limit: app_commands.Range[float, 0.0, 1e6]
    ) -> None:
        entry = await self.credits.set_member_limit(
            self._guild(interaction), interaction.user.id, member.id, millicredits(limit)
        )
        await self._done(interaction, entry)

    @admin.command(name="clear", description="Remove a member's own limit (their roles or the default apply)")
    @app_commands.describe(member="The member")
    async def clear(self, interaction: discord.Interaction[Any], member: discord.Member) -> None:
        await self._done(
            interaction, await self.credits.clear_member(self._guild(interaction), interaction.user.id, member.id)
        )

    @admin.command(name="role", description="Set a role's limit, make it unlimited, or remove its setting")
    @app_commands.describe(
        role="The role", limit="Credits per period, 'unlimited', or 'none' to remove the role's setting"
    )
    async def role(self, interaction: discord.Interaction[Any], role: discord.Role, limit: str) -> None:
        word = limit.strip().lower()
        if word in ("none", "remove", "clear"):
            entry = await self.credits.set_role(
                self._guild(interaction), interaction.user.id, role.id, None, remove=True
            )
        elif word == "unlimited":
            entry = await self.credits.set_role(self._guild(interaction), interaction.user.id, role.id, None)
        else:
            try:
                amount = float(word)
                if not 0 <= amount <= 1e6:
                    raise ValueError
            except ValueError:
                await self._reply(
                    interaction, tr(interaction.locale, "The limit must be a number of credits, `unlimited` or `none`.")
                )
                return
            entry = await self.credits.set_role(
                self._guild(interaction), interaction.user.id, role.id, millicredits(amount)
            )
        await self._done(interaction, entry)

    @admin.command(name="default", description="The server's default limit and its period")
    @app_commands.describe(limit="Credits per period", period="When credits reset (UTC calendar)")
    async def default(
        self, interaction: discord.Interaction[Any], limit: app_commands.Range[float, 0.0, 1e6], period: Period
    ) -> None:
        entry = await self.credits.set_default(
            self._guild(interaction), interaction.user.id, millicredits(limit), period
        )
        await self._done(interaction, entry)

    @admin.command(name="caps", description="How many jobs may be in progress at once, per member and per server")
    @app_commands.describe(member="Jobs in progress per member", server="Jobs in progress in the whole server")
    async def caps(
        self,
        interaction: discord.Interaction[Any],
        member: app_commands.Range[int, 1, 100],
        server: app_commands.Range[int, 1, 1000],
    ) -> None:
        await self._done(
            interaction, await self.credits.set_caps(self._guild(interaction), interaction.user.id, member, server)
        )

    @admin.command(name="grant", description="Bonus credits for a member, for the current period")
    @app_commands.describe(member="The member", amount="Credits to add", reason="Why (kept in the audit log)")
    async def grant(
        self,
        interaction: discord.Interaction[Any],
        member: discord.Member,
        amount: app_commands.Range[float, 0.001, 1e6],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        entry = await self.credits.grant(
            self._guild(interaction), interaction.user.id, member.id, millicredits(amount), reason
        )
        await self._done(interaction, entry)

    @admin.command(name="block", description="Stop a member from making videos; they see the reason")
    @app_commands.describe(member="The member", reason="Shown to the member and kept in the audit log")
    async def block(
        self, interaction: discord.Interaction[Any], member: discord.Member, reason: app_commands.Range[str, 1, 200]
    ) -> None:
        await self._done(
            interaction, await self.credits.block(self._guild(interaction), interaction.user.id, member.id, reason)
        )

    @admin.command(name="unblock", description="Let a blocked member make videos again")
    @app_commands.describe(member="The member")
    async def unblock(self, interaction: discord.Interaction[Any], member: discord.Member) -> None:
        await self._done(
            interaction, await self.credits.unblock(self._guild(interaction), interaction.user.id, member.id)
        )

    @admin.command(name="usage", description="The top members by credits, and the server's total")
    @app_commands.describe(period="Which period (the server's own by default)")
    async def usage(self, interaction: discord.Interaction[Any], period: Period | None = None) -> None:
        """The table, and beside it the last 30 days as a chart (drawing takes a moment: the answer is deferred)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild = self._guild(interaction)
        rows, window = await self.credits.usage(guild, period)
        locale = interaction.locale
        if window.start.timestamp() <= 0:
            since = tr(locale, "all time")
        else:
            since = tr(locale, "since {when}", when=f"<t:{int(window.start.timestamp())}:f>")
        chart = await draw_usage_chart(await self.credits.daily_credits(guild), locale=str(locale))
        files = [discord.File(io.BytesIO(chart), "usage-30-days.png")] if chart is not None else []
        if not rows:
            text = tr(locale, "No videos {since}.", since=since)
        else:
            lines = [tr(locale, "member · jobs · seconds · credits · billed units")]
            lines += [
                f"<@{r.user_id}> · {r.jobs} · {r.seconds:.0f} · {format_credits(r.credits)} · "
                f"{format_credits(r.billed)}"
                for r in rows
            ]
            total = (
                f"**{tr(locale, 'Total')}** · {sum(r.jobs for r in rows)} · {sum(r.seconds for r in rows):.0f} · "
                f"{format_credits(sum(r.credits for r in rows))} · {format_credits(sum(r.billed for r in rows))}"
            )
            # The total goes first when lines must be dropped, so it is never the one left out.
            header = tr(locale, "**Usage {since}**", since=since) + f"\n{total}"
            text = fit_lines(header, lines, locale=locale)
        await interaction.followup.send(
            text, files=files, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @admin.command(name="log-channel", description="Where moderator actions and job starts and ends are posted")
    @app_commands.describe(channel="The channel (leave empty to stop posting)")
    async def log_channel(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel | None = None
    ) -> None:
        entry = await self.credits.set_log_channel(
            self._guild(interaction), interaction.user.id, channel.id if channel else None
        )
        await self._done(interaction, entry)

    @admin.command(name="confirm-above", description="Members confirm jobs costing more than this first")
    @app_commands.describe(credits="A number of credits, or 'off' (the default) to never ask")
    async def confirm_above(self, interaction: discord.Interaction[Any], credits: str) -> None:
        word = credits.strip().lower()
        above: int | None = None
        if word != "off":
            try:
                amount = float(word)
                if not 0 <= amount <= 1e6:
                    raise ValueError
            except ValueError:
                log.info("confirm-above: %r is not a number of credits", credits)
                await self._reply(
                    interaction, tr(interaction.locale, "Give a number of credits, or `off` to never ask.")
                )
                return
            above = millicredits(amount)
        entry = await self.credits.set_confirm_above(self._guild(interaction), interaction.user.id, above)
        await self._done(interaction, entry)

    @admin.command(name="review", description="Finished videos wait in this channel for a moderator's Approve")
    @app_commands.describe(channel="The review channel (leave empty to turn review off)")
    async def review(self, interaction: discord.Interaction[Any], channel: discord.TextChannel | None = None) -> None:
        entry = await self.credits.set_review_channel(
            self._guild(interaction), interaction.user.id, channel.id if channel else None
        )
        await self._done(interaction, entry)

    @admin.command(name="sound", description="Whether videos have sound when their member does not choose")
    @app_commands.describe(default="on, off, or provider (the default): the video service's own choice")
    async def sound(self, interaction: discord.Interaction[Any], default: Literal["on", "off", "provider"]) -> None:
        entry = await self.credits.set_sound_default(
            self._guild(interaction), interaction.user.id, None if default == "provider" else default
        )
        await self._done(interaction, entry)

    @admin.command(name="private", description="Whether members may make private videos (sent to them by DM)")
    @app_commands.describe(policy="allow (the default) or deny")
    async def private(self, interaction: discord.Interaction[Any], policy: Literal["allow", "deny"]) -> None:
        entry = await self.credits.set_private_policy(self._guild(interaction), interaction.user.id, policy)
        await self._done(interaction, entry)

    @admin.command(name="audit", description="Moderator actions, newest first")
    @app_commands.describe(member="Only actions on this member")
    async def audit(self, interaction: discord.Interaction[Any], member: discord.Member | None = None) -> None:
        guild_id = self._guild(interaction)
        target = member.id if member else None
        locale = interaction.locale

        async def render(page: int) -> tuple[str, bool]:
            entries = await self.credits.audit_entries(
                guild_id, target_id=target, limit=AUDIT_PAGE + 1, offset=page * AUDIT_PAGE
            )
            if not entries:
                return tr(locale, "No moderator actions recorded."), False
            shown = [describe_audit(entry, locale) for entry in entries[:AUDIT_PAGE]]
            header = tr(locale, "**Audit log** (page {page})", page=page + 1)
            return fit_lines(header, shown, locale=locale), len(entries) > AUDIT_PAGE

        await interaction.response.defer(ephemeral=True, thinking=True)
        await PagedView(interaction.user.id, render, locale=locale).show(interaction)

    # --- review buttons (cogs/views.py ApproveButton and RejectButton) -----------------------------------

    async def _reviewable(self, interaction: discord.Interaction[Any], job_id: str) -> bool:
        """Only moderators (Manage Server) decide, and only a video still waiting; anyone else is told why."""
        locale = interaction.locale
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            log.info("user %s may not review job %s", interaction.user.id, job_id)
            await reply_ephemeral(
                interaction, tr(locale, "Only moderators (Manage Server) can approve or reject videos.")
            )
            return False
        try:
            await self.reviews.waiting(interaction.guild_id, job_id)
        except ReviewRefused as refused:
            await self._refused(interaction, refused)
            return False
        return True

    async def _refused(self, interaction: discord.Interaction[Any], refused: ReviewRefused) -> None:
        locale = interaction.locale
        if refused.job is None:
            await reply_ephemeral(interaction, tr(locale, "That video's job is no longer known to me."))
            return
        state = state_word(locale, refused.job.status)
        await reply_ephemeral(interaction, tr(locale, "This video was already decided: {state}.", state=state))

    async def approve(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Approve: the video goes to its thread now (the poll loop is woken), and its member is told as they chose."""
        if not await self._reviewable(interaction, job_id):
            return
        assert interaction.guild_id is not None
        try:
            job = await self.reviews.approve(interaction.guild_id, interaction.user.id, job_id)
        except ReviewRefused:
            await reply_ephemeral(interaction, tr(interaction.locale, "This video was already decided."))
            return
        log.info("job %s approved by %s", job_id, interaction.user.id)
        before = interaction.message.content if interaction.message else ""
        await interaction.response.edit_message(
            content=f"{before}\n{decision_line(job, interaction.user.id, interaction.locale)}",
            view=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        await self.show_decided(job, interaction.user.id)

    async def reject(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Reject: ask the moderator for the reason the member will read."""
        if not await self._reviewable(interaction, job_id):
            return
        shown = interaction.message.content if interaction.message else ""
        await interaction.response.send_modal(RejectModal(self, job_id, shown, interaction.locale))

    async def rejected(self, interaction: discord.Interaction[Any], job_id: str, reason: str, shown: str) -> None:
        """The modal's answer: end the job `rejected` (its credits stay spent), update the review message and tell
        the member in the job's thread."""
        if not await self._reviewable(interaction, job_id):
            return
        assert interaction.guild_id is not None
        try:
            job = await self.reviews.reject(interaction.guild_id, interaction.user.id, job_id, reason)
        except ReviewRefused:
            await reply_ephemeral(interaction, tr(interaction.locale, "This video was already decided."))
            return
        log.info("job %s rejected by %s", job_id, interaction.user.id)
        await reply_ephemeral(interaction, tr(interaction.locale, "Rejected; the member is told your reason."))
        if interaction.channel_id:
            await self._mark_review_message(job, interaction.channel_id, interaction.user.id, shown, interaction.locale)
        await self.show_decided(job, interaction.user.id)

    @commands.Cog.listener()
    async def on_review_decided(self, job: Job, moderator_id: int) -> None:
        """A decision made in the dashboard: Discord shows it as after the buttons (the review message too)."""
        settings = await self.credits.settings(job.guild_id) if job.guild_id is not None else None
        if settings is not None and settings.review_channel_id is not None:
            await self._mark_review_message(job, settings.review_channel_id, moderator_id, None)
        await self.show_decided(job, moderator_id)

    async def show_decided(self, job: Job, moderator_id: int) -> None:
        """What a review decision does in Discord, wherever it was made: the log line; an approved video posted now
        (the poll loop is woken); a rejected one told to its member, and its card showing the end."""
        server = self.bot.server_locale(job.guild_id)
        if job.review_state == "approved":
            self.bot.dispatch("video_approved", job.id)  # delivered without waiting for the next tick
            text = tr(server, "✅ <@{moderator}> approved video `{job}`", moderator=moderator_id, job=job.id[:8])
            await self.bot.post_log(job.guild_id, text)
            return
        if job.review_state != "rejected":  # not decided: nothing to show (never told "not approved" by mistake)
            log.warning("job %s: a review decision shown while its review is %s", job.id, job.review_state)
            return
        reason = discord.utils.escape_markdown(job.review_reason or "")
        text = tr(
            server,
            "⛔ <@{moderator}> rejected video `{job}`: {reason}",
            moderator=moderator_id,
            job=job.id[:8],
            reason=reason,
        )
        await self.bot.post_log(job.guild_id, text)
        await Deliverer(self.bot).tell_rejected(job)
        self.bot.dispatch("job_changed", job)  # its status message, card and the log channel show the end

    async def _mark_review_message(
        self, job: Job, channel_id: int, moderator_id: int, shown: str | None, locale: object = None
    ) -> None:
        """The review message shows the decision and loses its buttons (`shown`: its text, read if not given)."""
        if not job.review_message_id:
            return
        review = self.bot.get_partial_messageable(channel_id, guild_id=job.guild_id)
        message = review.get_partial_message(job.review_message_id)
        try:
            if shown is None:
                shown = (await message.fetch()).content
            await message.edit(
                content=f"{shown}\n{decision_line(job, moderator_id, locale or self.bot.server_locale(job.guild_id))}",
                view=None,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException as exc:
            log.info("job %s: could not update its review message: %s", job.id, exc)


def decision_line(job: Job, moderator_id: int, locale: object) -> str:
    """The line a review message gets once decided (`job` as decided)."""
    if job.review_state == "approved":
        return tr(locale, "✅ Approved by <@{moderator}>.", moderator=moderator_id)
    reason = discord.utils.escape_markdown(job.review_reason or "")
    return tr(locale, "⛔ Rejected by <@{moderator}>: {reason}", moderator=moderator_id, reason=reason)


class RejectModal(discord.ui.Modal):
    """The moderator's reason, shown to the member (the form in the moderator's language)."""

    def __init__(self, cog: QuotaCog, job_id: str, shown: str, locale: object = None) -> None:
        super().__init__(title=tr(locale, "Reject video"))
        self.reason: discord.ui.TextInput[RejectModal] = discord.ui.TextInput(
            label=tr(locale, "Reason (the member reads it)"), style=discord.TextStyle.paragraph, max_length=300
        )
        self.add_item(self.reason)
        self.cog = cog
        self.job_id = job_id
        self.shown = shown  # the review message's text, kept with the decision added

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self.cog.rejected(interaction, self.job_id, self.reason.value.strip(), self.shown)


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(QuotaCog(bot))
