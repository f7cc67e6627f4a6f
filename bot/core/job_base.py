"""What every part of the job service shares: its state (the store, the client, the clock, the settings, this
process's name and claims), the requests and answers it passes, and its errors. `bot.core.jobs.JobService` combines
the parts; each part is a class over `JobBase` in a module of its own."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bot.core import quota
from bot.core.credits import CreditService
from bot.core.i18n import english
from bot.core.model import Claimed, InFlight, Job, Lease, lease_of
from bot.core.options import OPTIONS, InvalidOption, JobOptions, option
from bot.core.scheduling import AccountPause
from bot.media.images import FirstFrame
from bot.provider.errors import (
    KlingAccountError,
    KlingAuthError,
    KlingBadRequest,
    KlingContentPolicy,
    KlingError,
    KlingRateLimited,
)
from bot.provider.kling import KlingClient
from bot.provider.records import KlingTask
from bot.storage.fleet import process_name
from bot.storage.interface import Storage

# A job left `reserved` (and never sent) for this many leases was not being sent by anyone: send it now. A command
# holds its job this long from the reservation (the card, the thread, the first frame, then the submit).
RESERVED_GRACE_LEASES = 2
# A submit whose answer was lost is looked up by its external id, at least twice over this long, before it is sent
# again: a gateway may create the task late and may not refuse a second one under the same id.
SUBMIT_LOOKUP_SECONDS = 150.0
# A job still rendering past JOB_TIMEOUT_MINUTES is late, not failed: the provider bills it either way, so it is
# asked about less and less often (see bot/core/scheduling.py) for this long before it is given up.
LATE_LIMIT_SECONDS = 24 * 3600.0
# Background work is claimed (see docs/fleet.md): a claim lasts this long unless renewed, so the jobs
# of a process that stopped go to another one after at most this long.
LEASE_SECONDS = 60.0
POLL_BATCH = 10_000  # jobs claimed at once by one piece of background work (a query then asks about 20 at a time)


class InvalidRequest(ValueError):
    """The request breaks a rule; the message says exactly what to change. Nothing was written or sent."""


class ServiceUnavailable(Exception):
    """The video service cannot take jobs right now; nothing was written or charged."""


class SubmitRefused(Exception):
    """The provider refused the job; it is recorded as failed and charges nothing."""

    def __init__(self, job: Job, reason: str, error: KlingError) -> None:
        super().__init__(reason)
        self.job = job
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a member (or the command line) asks for."""

    kind: Literal["text", "image"]
    prompt: str
    # The options, named as declared in bot/core/options.py; None: the declared default.
    duration: int = option("duration").default
    resolution: str = option("resolution").default
    aspect_ratio: str | None = None
    sound: str | None = None  # None: the server's default, else the provider's
    image: FirstFrame | None = None
    end_image: FirstFrame | None = None  # the last frame, for a model that has one (`options.takes_frame`)
    image_url: str | None = None
    image_source: str | None = None
    frame_url: str | None = None  # a public URL of `image` too, for a gateway that refuses Base64
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    role_ids: tuple[int, ...] = ()
    attachment_size_limit: int | None = None
    wait_if_unavailable: bool = False  # the member chose to queue rather than be refused while the service is down
    parent_id: str | None = None  # the job this one continues (its first frame is that video's last frame)
    edited_from: str | None = None  # the job whose prompt (and duration, sound) this one edits (the Edit button)
    locale: str | None = None  # the member's Discord locale: later posts about the job are in their language
    request_key: str | None = None  # the question this answers: a second job for the same key is refused
    private: bool = False  # nothing public: ephemeral answers, the video by DM
    followup_token: str | None = None  # the interaction's token: a closed DM's fallback until followup_until
    followup_until: float | None = None

    @property
    def options(self) -> JobOptions:
        """The chosen options (the fields named as in `OPTIONS`), checked; raises `InvalidRequest`."""
        try:
            return JobOptions.of(self.kind, {opt.name: getattr(self, opt.name, None) for opt in OPTIONS})
        except InvalidOption as exc:
            raise InvalidRequest(str(exc)) from None


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job that moved during a poll: its row after the move and the state it left."""

    job: Job
    previous: str


def explain(error: KlingError) -> str:
    """The provider's refusal in words a member can act on."""
    if isinstance(error, KlingContentPolicy):
        return english(
            "The video service refused this prompt or image under its content policy. "
            "Change it and try again; nothing was charged."
        )
    if isinstance(error, KlingAccountError):
        return english("The video service account is out of credits or suspended; an operator must top it up.")
    if isinstance(error, KlingAuthError):
        return english("The bot's key for the video service was refused; an operator must fix the configuration.")
    if isinstance(error, KlingRateLimited):
        return english("The video service is busy right now; try again in a minute.")
    if isinstance(error, KlingBadRequest):
        # Only a submit's refusal is explained so, and a refused submit made no task: its credits are released.
        return english("The video service refused the request: {message}. Nothing was charged.", message=error.message)
    return english("The video service is not answering right now; try again later.")


def released(now: float) -> dict[str, Any]:
    """The changes that end a claim with the write that finishes its work (the release time orders later claims)."""
    return {"lease_owner": None, "lease_until": now}


class JobBase(ABC):
    """The state the parts share, this process's claims on job rows, and the one way a job fails."""

    def __init__(
        self,
        store: Storage,
        kling: KlingClient,
        *,
        job_timeout: float = 30 * 60,
        rates: Mapping[str, int] = quota.DEFAULT_RATES,
        credits: CreditService | None = None,
        callback_url: str | None = None,
        provider_concurrency: int = 5,
        pause_seconds: float = 300.0,
        adaptive: bool = True,
        origin: str = "discord",
        lookup_window: float = SUBMIT_LOOKUP_SECONDS,
        late_limit: float = LATE_LIMIT_SECONDS,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        poll_interval: float = 0.0,
    ) -> None:
        self.store = store
        self.owner = owner or process_name()  # who this service's claims belong to
        self.lease_seconds = lease_seconds
        self.reserved_grace = RESERVED_GRACE_LEASES * lease_seconds
        self.origin = origin  # the bot runs 'discord' jobs; the command line its own 'cli' ones
        self.lookup_window = lookup_window
        self.late_limit = late_limit
        self.kling = kling
        self.credits = credits
        self.job_timeout = job_timeout
        self.rates = rates
        self.callback_url = callback_url
        self.provider_concurrency = provider_concurrency
        self.clock = clock
        # Set when the provider refused our key or account: submissions wait for an operator (and a probe).
        self.pause = AccountPause(pause_seconds, clock)
        self.adaptive = adaptive
        # The poll loop's interval (POLL_INTERVAL_SECONDS): the fleet asks about a job about once per interval. 0, for
        # services ticked by hand (tests, benches), asks at every tick.
        self.poll_interval = poll_interval

    def lease_of(self, job: Job | Claimed) -> Lease | None:
        """The claim this process holds on a job row, if it is this process's (writes under it are fenced)."""
        return lease_of(job) if job.lease_owner == self.owner else None

    async def _claim(
        self, statuses: Sequence[str], *, limit: int = POLL_BATCH, seconds: float | None = None, **narrow: Any
    ) -> list[Job]:
        length = seconds if seconds is not None else self.lease_seconds
        return await self.store.claim_jobs(
            statuses, owner=self.owner, now=self.clock(), seconds=length, limit=limit, origin=self.origin, **narrow
        )

    async def _claim_in_flight(self, jobs: Sequence[InFlight]) -> list[Claimed]:
        """Claim these jobs (read just before) to ask about them; the ones taken, as claimed."""
        return await self.store.claim_in_flight(
            [(job.id, job.lease_attempt) for job in jobs],
            owner=self.owner,
            now=self.clock(),
            seconds=self.lease_seconds,
            limit=POLL_BATCH,
            origin=self.origin,
        )

    async def release_claims(self, jobs: Iterable[Job | Claimed]) -> None:
        """Give back this process's claims on these jobs (their work is done, or left for the next tick)."""
        owner = self.owner
        held = [(job.id, Lease(owner, job.lease_attempt)) for job in jobs if job.lease_owner == owner]
        await self.store.release_leases(held, self.clock())

    async def _fail(self, job: Job | Claimed, reason: str, previous: str | tuple[str, ...]) -> Job | None:
        """Fail a job (its reservation is released with it); None when another path already moved it."""
        now = self.clock()
        if not await self.store.transition(
            job.id,
            previous,
            "failed",
            lease=self.lease_of(job),
            error=reason,
            finished_at=now,
            updated_at=now,
            **released(now),
        ):
            return None
        return await self.store.get_job(job.id)

    # --- what one part asks of another: defined in the part named, declared here so each part type-checks on its own
    # (and a JobService missing a part cannot be built). Intake's start takes a slot, queues or submits; Polling
    # submits, adopts a found task and dispatches; Dispatch applies the state a submit's answer is already in.

    @abstractmethod
    async def _take_slot(self, job: Job) -> bool: ...  # Dispatch

    @abstractmethod
    async def _queue(self, job: Job, why: str) -> Job: ...  # Dispatch

    @abstractmethod
    async def _submit(self, job: Job, *, first_frame: str | None = None) -> Job: ...  # Dispatch

    @abstractmethod
    async def _adopt(self, job: Job, task: KlingTask, previous: str) -> Job: ...  # Dispatch

    @abstractmethod
    async def dispatch_once(self) -> list[JobChange]: ...  # Dispatch

    @abstractmethod
    async def _apply(self, job: Job | Claimed, task: KlingTask) -> Job | None: ...  # Polling
