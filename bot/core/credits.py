"""Credits per member per server: the reservation behind each job, the member's view, the moderators' actions."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from bot.core import quota
from bot.core.i18n import english
from bot.core.model import AuditEntry, DayCredits, Job, MemberQuota, QuotaFacts, QuotaSettings, UsageRow
from bot.storage.interface import Storage

# The quota scope of a member's direct messages with the bot (jobs.guild_id and the quota tables' guild_id): one
# personal quota per member, set by the bot's owner; no server has id 0.
PERSONAL = 0


class QuotaRefused(Exception):
    """The member may not start this job now; `reason` says why, `reset_at` when their credits come back (None
    when the refusal is not about credits, or the period never resets). The front end words the time."""

    def __init__(self, reason: str, reset_at: datetime | None = None, *, about_credits: bool = False) -> None:
        when = f" Your credits reset at {reset_at:%Y-%m-%d %H:%M} UTC." if reset_at else ""  # the command line
        super().__init__(reason + when)
        self.reason = reason
        self.reset_at = reset_at
        self.about_credits = about_credits


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """What `/quota` shows a member."""

    limit: quota.Limit
    used: int
    reserved: int
    granted: int
    remaining: int | None
    window: quota.Window
    in_flight: int
    settings: QuotaSettings


class CreditService:
    """Reads and changes quotas; every moderator change is written to the audit log."""

    def __init__(
        self,
        store: Storage,
        defaults: QuotaSettings,
        *,
        rates: Mapping[str, int] = quota.DEFAULT_RATES,
        clock: Callable[[], float] = time.time,
        source: str = "discord",
        personal: QuotaSettings | None = None,
    ) -> None:
        self.store = store
        self.defaults = defaults
        # Direct messages off (None): a limit of 0, so even a request past the front's refusal reserves nothing.
        self.personal = personal or replace(defaults, default_limit=0)
        self.rates = rates
        self.clock = clock
        self.source = source  # where its moderators' changes come from, as the audit records it

    def acting_from(self, source: str) -> CreditService:
        """The same service, its changes audited as coming from `source` ('web', 'cli')."""
        return CreditService(
            self.store, self.defaults, rates=self.rates, clock=self.clock, source=source, personal=self.personal
        )

    def defaults_for(self, guild_id: int) -> QuotaSettings:
        """The rules a scope starts with: the personal quota's for direct messages, else a server's defaults."""
        return self.personal if guild_id == PERSONAL else self.defaults

    def window(self, period: str) -> quota.Window:
        """The current period's start and reset time."""
        return quota.period_window(period, datetime.fromtimestamp(self.clock(), UTC))

    def _window_start(self, period: str) -> float:
        return self.window(period).start.timestamp()

    def _limit(self, facts: QuotaFacts) -> quota.Limit:
        return quota.resolve_limit(
            default=facts.settings.default_limit,
            override=facts.member.override,
            role_limits=facts.role_quotas,
            blocked_reason=facts.member.blocked_reason,
        )

    async def reserve(self, job: Job, role_ids: Sequence[int]) -> None:
        """Write the job only if the member's quota and the in-flight caps allow it; else raise QuotaRefused."""
        limits: dict[str, quota.Limit] = {}

        def decide(facts: QuotaFacts) -> quota.Decision:
            limits["limit"] = limit = self._limit(facts)
            usage = facts.usage
            return quota.check(
                limit,
                used=usage.used,
                reserved=usage.reserved,
                granted=usage.granted,
                cost=job.cost_estimate,
                member_in_flight=usage.in_flight,
                member_in_flight_cap=facts.settings.member_in_flight,
                server_in_flight=facts.server_in_flight,
                server_in_flight_cap=facts.settings.server_in_flight,
            )

        facts, decision = await self.store.reserve_job(
            job,
            role_ids=role_ids,
            defaults=self.defaults_for(job.guild_id or 0),
            window_start=self._window_start,
            decide=decide,
        )
        if not decision.allowed:
            raise self._refusal(decision, limits["limit"], facts, job.cost_estimate)

    def _refusal(self, decision: quota.Decision, limit: quota.Limit, facts: QuotaFacts, cost: int) -> QuotaRefused:
        settings = facts.settings
        if decision.reason == "blocked":
            return QuotaRefused(
                english(
                    "You are blocked from making videos in this server: {reason}.",
                    reason=limit.reason or english("no reason given"),
                )
            )
        if decision.reason == "member_busy":
            return QuotaRefused(
                english(
                    "You already have {count} videos in progress (the limit is {limit}); wait for one to finish.",
                    count=facts.usage.in_flight,
                    limit=settings.member_in_flight,
                )
            )
        if decision.reason == "server_busy":
            return QuotaRefused(
                english(
                    "This server already has {count} videos in progress (the limit is {limit}); try again in a minute.",
                    count=facts.server_in_flight,
                    limit=settings.server_in_flight,
                )
            )
        left = decision.remaining or 0
        reason = english(
            "This video needs {cost} credits (about {cost_seconds} s of 720p) and you have {left} credits (about "
            "{left_seconds} s of 720p) left. A shorter or 720p video costs less.",
            cost=quota.format_credits(cost),
            cost_seconds=quota.seconds_of_720p(cost, self.rates),
            left=quota.format_credits(left),
            left_seconds=quota.seconds_of_720p(left, self.rates),
        )
        return QuotaRefused(reason, self.window(settings.period).reset_at, about_credits=True)

    def describe(self, millicredits: int) -> str:
        """Credits with about how many seconds of 720p video they buy."""
        seconds = quota.seconds_of_720p(millicredits, self.rates)
        return english(
            "{amount} credits (about {seconds} s of 720p)", amount=quota.format_credits(millicredits), seconds=seconds
        )

    async def status(self, guild_id: int, user_id: int, role_ids: Sequence[int]) -> QuotaStatus:
        """A member's limit, where it comes from, what is used, left and reserved, and when it resets."""
        settings = await self.store.quota_settings(guild_id, self.defaults_for(guild_id))
        window = self.window(settings.period)
        facts = QuotaFacts(
            settings=settings,
            member=await self.store.member_quota(guild_id, user_id),
            role_quotas=await self.store.role_quotas(guild_id, role_ids),
            usage=await self.store.usage(guild_id, user_id, window.start.timestamp()),
            server_in_flight=0,
        )
        limit = self._limit(facts)
        usage = facts.usage
        return QuotaStatus(
            limit=limit,
            used=usage.used,
            reserved=usage.reserved,
            granted=usage.granted,
            remaining=quota.remaining(limit, used=usage.used, reserved=usage.reserved, granted=usage.granted),
            window=window,
            in_flight=usage.in_flight,
            settings=settings,
        )

    # --- moderators -------------------------------------------------------------------------------------

    def _audit(
        self,
        guild_id: int,
        moderator_id: int,
        action: str,
        target_id: int | None,
        before: str | None,
        after: str | None,
        reason: str | None = None,
    ) -> AuditEntry:
        """The audit row of a change; the store writes it in the change's own transaction."""
        return AuditEntry(guild_id, moderator_id, action, target_id, before, after, reason, self.clock(), self.source)

    @staticmethod
    def _member_text(member: MemberQuota) -> str:
        limit = None if member.override is None else quota.format_credits(member.override)
        reason = member.blocked_reason
        if limit is not None and reason is not None:
            return english("limit {amount}, blocked ({reason})", amount=limit, reason=reason)
        if limit is not None:
            return english("limit {amount}", amount=limit)
        if reason is not None:
            return english("blocked ({reason})", reason=reason)
        return english("no override")

    async def _change_member(
        self, guild_id: int, moderator_id: int, user_id: int, action: str, reason: str | None, **changes: object
    ) -> AuditEntry:
        before = await self.store.member_quota(guild_id, user_id)
        after = replace(before, **changes)  # type: ignore[arg-type]
        entry = self._audit(
            guild_id, moderator_id, action, user_id, self._member_text(before), self._member_text(after), reason
        )
        await self.store.save_member_quota(guild_id, user_id, after, entry)
        return entry

    async def set_member_limit(self, guild_id: int, moderator_id: int, user_id: int, limit: int) -> AuditEntry:
        """Give one member their own limit (milli-credits per period)."""
        return await self._change_member(guild_id, moderator_id, user_id, "set", None, override=limit)

    async def clear_member(self, guild_id: int, moderator_id: int, user_id: int) -> AuditEntry:
        """Remove a member's own limit: their roles or the server's default apply again."""
        return await self._change_member(guild_id, moderator_id, user_id, "clear", None, override=None)

    async def block(self, guild_id: int, moderator_id: int, user_id: int, reason: str) -> AuditEntry:
        """Stop a member from starting videos; the reason is shown to them."""
        return await self._change_member(guild_id, moderator_id, user_id, "block", reason, blocked_reason=reason)

    async def unblock(self, guild_id: int, moderator_id: int, user_id: int) -> AuditEntry:
        """Lift a block."""
        return await self._change_member(guild_id, moderator_id, user_id, "unblock", None, blocked_reason=None)

    async def grant(
        self, guild_id: int, moderator_id: int, user_id: int, amount: int, reason: str, request_key: str | None = None
    ) -> AuditEntry:
        """Bonus credits for the current period; a `request_key` used before grants nothing (DuplicateRequest)."""
        settings = await self.store.quota_settings(guild_id, self.defaults)
        before = await self.store.usage(guild_id, user_id, self._window_start(settings.period))
        entry = self._audit(
            guild_id,
            moderator_id,
            "grant",
            user_id,
            english("granted {amount}", amount=quota.format_credits(before.granted)),
            english("granted {amount}", amount=quota.format_credits(before.granted + amount)),
            reason,
        )
        await self.store.add_grant(guild_id, user_id, amount, entry, request_key)
        return entry

    async def set_role(
        self, guild_id: int, moderator_id: int, role_id: int, limit: int | None, *, remove: bool = False
    ) -> AuditEntry:
        """A role's limit (None: unlimited), or remove it so the role no longer counts."""
        before = await self.store.role_quotas(guild_id, [role_id])

        def text(values: dict[int, int | None]) -> str:
            if role_id not in values:
                return english("no setting")
            value = values[role_id]
            return (
                english("unlimited") if value is None else english("limit {amount}", amount=quota.format_credits(value))
            )

        after = {} if remove else {role_id: limit}
        entry = self._audit(guild_id, moderator_id, "role", role_id, text(before), text(after))
        await self.store.save_role_quota(guild_id, role_id, limit, entry, remove=remove)
        return entry

    async def set_default(self, guild_id: int, moderator_id: int, limit: int, period: str) -> AuditEntry:
        """The server's default limit and its period."""
        if period not in quota.PERIODS:
            raise ValueError(f"unknown period {period!r}")
        before = await self.store.quota_settings(guild_id, self.defaults)
        after = replace(before, default_limit=limit, period=period)
        entry = self._audit(
            guild_id,
            moderator_id,
            "default",
            None,
            english("{amount} per {period}", amount=quota.format_credits(before.default_limit), period=before.period),
            english("{amount} per {period}", amount=quota.format_credits(limit), period=period),
        )
        await self.store.save_quota_settings(guild_id, after, entry)
        return entry

    async def set_caps(self, guild_id: int, moderator_id: int, member: int, server: int) -> AuditEntry:
        """The caps on jobs in flight per member and per server."""
        before = await self.store.quota_settings(guild_id, self.defaults)
        after = replace(before, member_in_flight=member, server_in_flight=server)
        entry = self._audit(
            guild_id,
            moderator_id,
            "caps",
            None,
            english(
                "{member} per member, {server} per server",
                member=before.member_in_flight,
                server=before.server_in_flight,
            ),
            english("{member} per member, {server} per server", member=member, server=server),
        )
        await self.store.save_quota_settings(guild_id, after, entry)
        return entry

    async def set_log_channel(self, guild_id: int, moderator_id: int, channel_id: int | None) -> AuditEntry:
        """Where moderator actions and job starts and ends are posted (None: nowhere)."""
        before = await self.store.quota_settings(guild_id, self.defaults)
        entry = self._audit(
            guild_id,
            moderator_id,
            "log-channel",
            channel_id,
            str(before.log_channel_id) if before.log_channel_id else english("none"),
            str(channel_id) if channel_id else english("none"),
        )
        await self.store.save_quota_settings(guild_id, replace(before, log_channel_id=channel_id), entry)
        return entry

    async def set_confirm_above(self, guild_id: int, moderator_id: int, above: int | None) -> AuditEntry:
        """Jobs costing more than `above` milli-credits ask the member to confirm first (None: never ask)."""
        before = await self.store.quota_settings(guild_id, self.defaults)

        def text(value: int | None) -> str:
            return "off" if value is None else quota.format_credits(value)

        entry = self._audit(guild_id, moderator_id, "confirm-above", None, text(before.confirm_above), text(above))
        await self.store.save_quota_settings(guild_id, replace(before, confirm_above=above), entry)
        return entry

    async def set_review_channel(self, guild_id: int, moderator_id: int, channel_id: int | None) -> AuditEntry:
        """Where finished videos wait for a moderator's Approve (None: no review, videos go straight out)."""
        before = await self.store.quota_settings(guild_id, self.defaults)
        entry = self._audit(
            guild_id,
            moderator_id,
            "review",
            channel_id,
            str(before.review_channel_id) if before.review_channel_id else "off",
            str(channel_id) if channel_id else "off",
        )
        await self.store.save_quota_settings(guild_id, replace(before, review_channel_id=channel_id), entry)
        return entry

    async def set_sound_default(self, guild_id: int, moderator_id: int, sound: str | None) -> AuditEntry:
        """The sound of the server's videos whose member does not choose: 'on', 'off' or None (the provider's)."""
        if sound not in ("on", "off", None):
            raise ValueError(f"unknown sound default {sound!r}")
        before = await self.store.quota_settings(guild_id, self.defaults)
        entry = self._audit(
            guild_id, moderator_id, "sound", None, before.sound_default or "provider", sound or "provider"
        )
        await self.store.save_quota_settings(guild_id, replace(before, sound_default=sound), entry)
        return entry

    async def set_private_policy(self, guild_id: int, moderator_id: int, policy: str) -> AuditEntry:
        """Whether the server's members may make private videos: 'allow' (the default) or 'deny'."""
        if policy not in ("allow", "deny"):
            raise ValueError(f"unknown private policy {policy!r}")
        before = await self.store.quota_settings(guild_id, self.defaults)
        entry = self._audit(guild_id, moderator_id, "private", None, before.private_policy, policy)
        await self.store.save_quota_settings(guild_id, replace(before, private_policy=policy), entry)
        return entry

    async def audit_entries(
        self, guild_id: int, *, target_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[AuditEntry]:
        """A server's moderator actions (on one member, if given), newest first."""
        return await self.store.audit_entries(guild_id, target_id=target_id, limit=limit, offset=offset)

    async def settings(self, guild_id: int) -> QuotaSettings:
        """A server's quota rules and log channel (the defaults until its moderators change them)."""
        return await self.store.quota_settings(guild_id, self.defaults_for(guild_id))

    async def log_channels(self) -> dict[int, int]:
        """Every server's log channel (server id to channel id), where its moderators set one."""
        return await self.store.log_channels()

    async def credits_used(self, guild_id: int) -> int:
        """Milli-credits a server's members used or hold in its current period (for the metrics)."""
        settings = await self.settings(guild_id)
        return await self.store.credits_used(guild_id, self._window_start(settings.period))

    async def member_overrides(self, guild_id: int) -> dict[int, MemberQuota]:
        """The members of a server with their own limit or a block."""
        return await self.store.member_quota_rows(guild_id)

    async def role_limits(self, guild_id: int) -> dict[int, int | None]:
        """Every role of a server with a limit (None: unlimited)."""
        return await self.store.role_quotas(guild_id)

    async def usage(self, guild_id: int, period: str | None) -> tuple[list[UsageRow], quota.Window]:
        """The server's top members in a period (the server's own period by default)."""
        settings = await self.store.quota_settings(guild_id, self.defaults)
        window = self.window(period or settings.period)
        return await self.store.usage_table(guild_id, window.start.timestamp()), window

    async def daily_credits(self, guild_id: int, days: int = 30) -> list[DayCredits]:
        """The server's credits per UTC day over the last `days` days, today included, oldest first (a day without
        jobs is 0), counted as `/quota` counts them."""
        today = datetime.fromtimestamp(self.clock(), UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        first = today - timedelta(days=days - 1)
        counted = await self.store.daily_credits(guild_id, first.timestamp())
        return [
            DayCredits(day, counted.get(day, 0) / 1000)
            for day in (first.date() + timedelta(days=n) for n in range(days))
        ]
