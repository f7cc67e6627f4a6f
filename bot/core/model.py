"""The bot's plain data: jobs and their states, quota rules and usage, audit entries. No I/O.

The store turns rows into these; the services, the cogs and the command line use them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date
from typing import NamedTuple

from bot.core.options import JobOptions

# The states a job moves through (see docs/architecture.md): each set is named once, by what it means.
WAITING = ("reserved", "queued")  # accepted, not (known to be) at the provider yet
AT_PROVIDER = ("submitted", "processing")  # the provider is rendering it: polled
# Jobs that take one of the provider's slots: a reserved job is being sent (or its answer was lost).
HOLDING_A_SLOT = ("reserved", *AT_PROVIDER)
IN_PROGRESS = (*WAITING, *AT_PROVIDER)  # what a member's and a server's caps on jobs at once count
OPEN = (*IN_PROGRESS, "succeeded")  # not settled yet: a succeeded job still has to be posted
# `rejected`: a moderator's review refused the finished video; the provider billed it, so it stays charged.
FINAL = ("delivered", "failed", "cancelled", "undeliverable", "rejected")
STATES = (*OPEN, *FINAL)
NOTIFY_MODES = ("mention", "dm", "off")  # how a member is told their video is done (member_prefs.notify)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of `jobs`."""

    id: str
    guild_id: int | None
    channel_id: int | None
    user_id: int | None
    kind: str
    prompt: str
    duration: int
    resolution: str
    aspect_ratio: str | None
    image_sha256: str | None
    image_url: str | None
    image_source: str | None
    status: str
    provider_task_id: str | None
    provider_status: str | None
    error: str | None
    video_url: str | None
    video_seconds: float | None
    billed_amount: str | None
    cost_estimate: int
    cost_billed: int | None
    attachment_size_limit: int | None
    message_id: int | None
    thread_id: int | None
    status_message_id: int | None
    result_message_id: int | None
    attempts: int
    delivery_attempts: int
    created_at: float
    submitted_at: float | None
    finished_at: float | None
    delivered_at: float | None
    updated_at: float
    origin: str = "discord"
    frame_url: str | None = None
    uncertain_since: float | None = None
    lookups: int = 0
    cancel_requested: bool = False
    parent_id: str | None = None  # the job this one continues (its first frame is that video's last frame)
    locale: str | None = None  # the member's Discord locale, for posts made after the command's answer
    review_message_id: int | None = None
    review_state: str | None = None  # None (no review), 'pending', 'approved' or 'rejected'
    review_reason: str | None = None
    lease_owner: str | None = None  # the process that claimed the job's background work, until lease_until
    lease_until: float | None = None
    lease_attempt: int = 0  # bumped by every claim: a write from an older claim is refused
    # The question this job answers (e.g. the command that asked to confirm it): unique, so pressing Confirm twice,
    # in one process or in two, writes (and charges) one job. None for the command line's jobs.
    request_key: str | None = None
    sound: str | None = None  # 'on', 'off' or None (nothing sent: the provider's default)
    sound_dropped: bool = False  # the gateway refused `settings.audio`: sent without it, charged as silent
    private: bool = False  # nothing public: ephemeral answers, the video by DM
    edited_from: str | None = None  # the job whose prompt this one edits
    end_image_sha256: str | None = None  # the last frame, for a model that has one
    followup_token: str | None = None  # the interaction's token, for follow-ups until followup_until
    followup_until: float | None = None
    delivered_via: str | None = None  # 'thread', 'channel', 'dm', 'followup' or 'none'
    undelivered_told: bool = False  # a video that reached no one was told to its member
    # When a process of the fleet last asked the provider about the job, on the lease clock (the database's on
    # PostgreSQL): every process's poll spaces its questions from it, so the fleet asks once per interval.
    asked_at: float | None = None

    @property
    def options(self) -> JobOptions:
        """The options it was made with, from its columns."""
        return JobOptions.stored(self.kind, self)


class DuplicateRequest(Exception):
    """A job answering the same question (its request key) was written already; nothing was written or charged."""


class InFlight(NamedTuple):
    """A job at the provider as a poll tick reads it: the few columns it needs, not the whole row (a named tuple:
    a tick builds 10,000 of them, and a tuple is built several times faster than a dataclass)."""

    id: str
    status: str
    provider_task_id: str | None
    duration: int
    resolution: str
    created_at: float
    submitted_at: float | None
    lease_owner: str | None
    lease_attempt: int  # the claim counter as read: the tick claims the job only if nobody claimed it since
    asked_ago: float | None  # seconds since any process last asked the provider about it (lease clock); None: never


class Lease(NamedTuple):
    """A process's claim on a job's background work: a write made under it is refused once the job was claimed
    again (its attempt moved on), so a process that paused past its lease cannot overwrite newer work."""

    owner: str
    attempt: int


class Claimed(NamedTuple):
    """A job a poll tick's claim took, with what the tick's work on it reads (its state then, its task, the lease
    it now carries); the rest of its narrow row was read just before."""

    id: str
    status: str
    provider_task_id: str | None
    lease_owner: str | None
    lease_attempt: int


def lease_of(job: Job | Claimed) -> Lease | None:
    """The claim a job row carries, if any."""
    return Lease(job.lease_owner, job.lease_attempt) if job.lease_owner is not None else None


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    """A server's quota rules; limits in milli-credits."""

    default_limit: int
    period: str
    member_in_flight: int
    server_in_flight: int
    log_channel_id: int | None = None
    confirm_above: int | None = None  # a job costing more asks for a Confirm button first; None: never
    review_channel_id: int | None = None  # finished videos wait for a moderator there; None: no review
    sound_default: str | None = None  # 'on', 'off' or None: the provider's default
    private_policy: str = "allow"  # 'allow' or 'deny': whether members may make private videos


@dataclass(frozen=True, slots=True)
class MemberQuota:
    """A member's own override (milli-credits) and block reason."""

    override: int | None
    blocked_reason: str | None


@dataclass(frozen=True, slots=True)
class Usage:
    """A member's credits in the current period, derived from jobs and grants, and their jobs in flight."""

    used: int
    reserved: int
    granted: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class QuotaFacts:
    """Everything the quota policy needs, read inside the reserving transaction."""

    settings: QuotaSettings
    member: MemberQuota
    role_quotas: dict[int, int | None]
    usage: Usage
    server_in_flight: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One member's line in a server's usage table."""

    user_id: int
    jobs: int
    seconds: float
    credits: int
    billed: int


@dataclass(frozen=True, slots=True)
class DayCredits:
    """A server's credits on one UTC day (the usage chart's bar)."""

    day: date
    credits: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One moderator action: who did what to whom, before and after."""

    guild_id: int
    moderator_id: int
    action: str
    target_id: int | None
    before: str | None
    after: str | None
    reason: str | None
    created_at: float
    source: str = "discord"  # 'discord', 'web' or 'cli'


@dataclass(frozen=True, slots=True)
class WebSession:
    """A browser's session on the dashboard: waiting for Discord's answer (`state`), or logged in as a user."""

    id: str  # the sha256 of the cookie's value
    state: str | None
    user_id: int | None
    user_name: str | None
    locale: str | None
    created_at: float
    expires_at: float
    guilds: str | None = None  # the login's servers as JSON ([{"id", "name"}]), read by the dashboard


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A first frame kept so a job can be submitted again after a crash, or re-rolled."""

    sha256: str
    mime: str
    width: int
    height: int
    data: bytes


# Fields fixed when a job is written; a state change may set any other (the state itself through a guarded move).
FIXED_JOB_FIELDS = frozenset(
    {"id", "guild_id", "channel_id", "user_id", "kind", "created_at", "status", "origin", "request_key"}
)
MUTABLE_JOB_FIELDS = frozenset(f.name for f in fields(Job)) - FIXED_JOB_FIELDS
