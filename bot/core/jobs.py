"""`JobService`: validate, reserve, submit, poll and settle video jobs. Plain data in and out; no Discord."""

from __future__ import annotations

import logging
import secrets
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from bot.core import quota
from bot.core.credits import CreditService
from bot.core.i18n import english
from bot.core.model import AT_PROVIDER, FINAL, NOTIFY_MODES, OPEN, WAITING, InFlight, Job, Lease, lease_of
from bot.core.scheduling import AccountPause, Polled, Shape, due_for_poll, fair_order, poll_delay, shape_of
from bot.crashpoints import crash_point
from bot.media.images import FirstFrame, base64_text, frame_base64, frame_bytes, send_slots
from bot.provider.kling import (
    KlingAccountError,
    KlingAuthError,
    KlingBadRequest,
    KlingClient,
    KlingContentPolicy,
    KlingError,
    KlingNotSent,
    KlingRateLimited,
    KlingTask,
    KlingUnavailable,
)
from bot.storage.fleet import process_name
from bot.storage.interface import Storage

log = logging.getLogger(__name__)

MAX_PROMPT = {"text": 3072, "image": 2500}
DURATIONS = range(3, 16)
RESOLUTIONS = ("720p", "1080p")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MAX_SUBMIT_ATTEMPTS = 3
# A job left `reserved` (and never sent) for this many leases was not being sent by anyone: send it now. A command
# holds its job this long from the reservation (the card, the thread, the first frame, then the submit).
RESERVED_GRACE_LEASES = 2
# A submit whose answer was lost is looked up by its external id, at least twice over this long, before it is sent
# again: a gateway may create the task late and may not refuse a second one under the same id.
SUBMIT_LOOKUP_SECONDS = 150.0
# A job still rendering past JOB_TIMEOUT_MINUTES is late, not failed: the provider bills it either way, so it is
# asked about less and less often (see bot/core/scheduling.py) for this long before it is given up.
LATE_LIMIT_SECONDS = 24 * 3600.0
MAX_CHAIN = 50  # segments read back from one video (a join of more would not fit an upload anyway)
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
    duration: int = 5
    resolution: str = "720p"
    aspect_ratio: str | None = None
    image: FirstFrame | None = None
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
    locale: str | None = None  # the member's Discord locale: later posts about the job are in their language
    request_key: str | None = None  # the question this answers: a second job for the same key is refused


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
        return english("The video service refused the request: {message}", message=error.message)
    return english("The video service is not answering right now; try again later.")


class JobService:
    """The job state machine over the store and the API client."""

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
        self.last_asked: dict[str, float] = {}  # job id -> when the provider was last asked about it

    @staticmethod
    def validate(request: JobRequest) -> None:
        """Raise `InvalidRequest` naming the first rule the request breaks."""
        prompt = request.prompt.strip()
        limit = MAX_PROMPT[request.kind]
        if request.kind == "text" and not prompt:
            raise InvalidRequest(english("The prompt is empty; describe the video you want."))
        if len(request.prompt) > limit:
            raise InvalidRequest(
                english(
                    "The prompt is {length} characters; {kind} videos allow at most {limit}.",
                    length=len(request.prompt),
                    kind=request.kind,
                    limit=limit,
                )
            )
        if "\x00" in request.prompt:
            raise InvalidRequest(english("The prompt contains a NUL character; remove it."))
        if not isinstance(request.duration, int) or request.duration not in DURATIONS:
            raise InvalidRequest(
                english(
                    "The duration must be a whole number of seconds from 3 to 15, not {duration}.",
                    duration=request.duration,
                )
            )
        if request.resolution not in RESOLUTIONS:
            raise InvalidRequest(
                english("The resolution must be 720p or 1080p, not {resolution}.", resolution=request.resolution)
            )
        if request.kind == "text":
            if request.aspect_ratio is not None and request.aspect_ratio not in ASPECT_RATIOS:
                raise InvalidRequest(
                    english("The aspect ratio must be 16:9, 9:16 or 1:1, not {ratio}.", ratio=request.aspect_ratio)
                )
            if request.image is not None or request.image_url is not None:
                raise InvalidRequest(english("A text video takes no image; use an image video for a first frame."))
        else:
            if request.aspect_ratio is not None:
                raise InvalidRequest(
                    english("An image video takes its shape from the image; leave the aspect ratio out.")
                )
            if (request.image is None) == (request.image_url is None):
                raise InvalidRequest(english("An image video needs exactly one first-frame image."))
            if request.image_url is not None and not request.image_url.startswith(("https://", "http://")):
                raise InvalidRequest(english("The first frame must be an http(s) link or an uploaded image."))

    def cost_of(self, duration: int, resolution: str) -> int:
        """The credits (milli) a job of this shape reserves."""
        return quota.job_cost(duration, resolution, self.rates)

    def unavailable_reason(self) -> str | None:
        """Why new jobs cannot be taken now, or None when they can."""
        if self.pause.active:
            return english(
                "The video service is unavailable: the bot's account needs an operator's attention. "
                "Nothing was charged; try again later."
            )
        if self.kling.breaker.refusing:
            return english(
                "The video service is not answering right now. Nothing was charged; try again in a few minutes."
            )
        return None

    async def create(self, request: JobRequest) -> Job:
        """Reserve and start a job at once (the command line; the bot posts the job's card in between).

        Raises `InvalidRequest`, `ServiceUnavailable` or `QuotaRefused` (nothing written) or `SubmitRefused`
        (recorded as failed, its credits released)."""
        return await self.start(await self.reserve(request), request)

    async def reserve(self, request: JobRequest) -> Job:
        """Validate, check the quota and write the job with its credits held; nothing is sent yet.

        Raises `DuplicateRequest` when a job answering the same question (`request.request_key`) exists."""
        self.validate(request)
        charged = self.credits is not None and self.origin == "discord"
        if charged and (request.guild_id is None or request.user_id is None):
            # Credits are counted per member of a server: a Discord job outside one would be sent with no quota.
            raise InvalidRequest(english("Videos can only be made in a server."))
        unavailable = self.unavailable_reason()
        if unavailable is not None and not request.wait_if_unavailable:
            raise ServiceUnavailable(unavailable)
        now = self.clock()
        image_sha = None
        if request.image is not None:
            image_sha = await self._store_frame(request.image)
        job = Job(
            id=secrets.token_hex(8),
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            user_id=request.user_id,
            kind=request.kind,
            prompt=request.prompt,
            duration=request.duration,
            resolution=request.resolution,
            aspect_ratio=(request.aspect_ratio or "16:9") if request.kind == "text" else None,
            image_sha256=image_sha,
            image_url=request.image_url,
            image_source=request.image_source,
            status="reserved",
            provider_task_id=None,
            provider_status=None,
            error=None,
            video_url=None,
            video_seconds=None,
            billed_amount=None,
            cost_estimate=self.cost_of(request.duration, request.resolution),
            cost_billed=None,
            attachment_size_limit=request.attachment_size_limit,
            message_id=None,
            thread_id=None,
            status_message_id=None,
            result_message_id=None,
            attempts=0,
            delivery_attempts=0,
            created_at=now,
            submitted_at=None,
            finished_at=None,
            delivered_at=None,
            updated_at=now,
            origin=self.origin,
            frame_url=request.frame_url,
            parent_id=request.parent_id,
            locale=request.locale,
            # Held by this process while its command posts the card and sends it: no one else sends it meanwhile.
            lease_owner=self.owner,
            lease_until=now + self.reserved_grace,
            lease_attempt=1,
            request_key=request.request_key,
        )
        if self.credits is not None and job.guild_id is not None and job.user_id is not None:
            await self.credits.reserve(job, request.role_ids)
        else:  # the command line's jobs, and services without quotas
            await self.store.add_job(job)
        log.info("job %s reserved (%s, %ss, %s)", job.id, job.kind, job.duration, job.resolution)
        crash_point("after_reserve")
        return job

    async def start(self, job: Job, request: JobRequest | None = None) -> Job:
        """Send a reserved job, or queue it when the provider or our own limit has no room (the bot only)."""
        try:
            if self.origin == "discord":
                if self.unavailable_reason() is not None:
                    return await self._queue(job, "the video service is down; the member chose to wait")
                if not await self._take_slot(job):
                    return await self._queue(job, "others are waiting, or the video service is at the bot's limit")
            if request is None or request.image is None:
                return await self._submit(job)
            # Only a few full-size frames are encoded and sent at once, so a burst of big images stays within memory.
            async with send_slots():
                return await self._submit(job, first_frame=await frame_base64(request.image))
        finally:
            await self.release_claims([job])

    async def _store_frame(self, image: FirstFrame) -> str:
        # Its own function, so the bytes are let go on return, not held for the rest of the reservation.
        async with frame_bytes(image) as data:
            return await self.store.put_image(data, image.mime, image.width, image.height)

    async def _take_slot(self, job: Job) -> bool:
        """Whether the job may be sent now: nobody waits and the fleet holds fewer than PROVIDER_CONCURRENCY."""
        lease = self.lease_of(job)
        if lease is None:  # not reserved by this process: the dispatcher sends it in turn
            return False
        return await self.store.take_slot(
            job.id, lease, capacity=self.provider_concurrency, now=self.clock(), seconds=self.reserved_grace
        )

    # --- claims ---------------------------------------------------------------------------------------------

    def lease_of(self, job: Job | InFlight) -> Lease | None:
        """The claim this process holds on a job row, if it is this process's (writes under it are fenced)."""
        return lease_of(job) if job.lease_owner == self.owner else None

    async def _claim(
        self, statuses: Sequence[str], *, limit: int = POLL_BATCH, seconds: float | None = None, **narrow: Any
    ) -> list[Job]:
        length = seconds if seconds is not None else self.lease_seconds
        return await self.store.claim_jobs(
            statuses, owner=self.owner, now=self.clock(), seconds=length, limit=limit, origin=self.origin, **narrow
        )

    async def _claim_in_flight(self, ids: Sequence[str]) -> list[InFlight]:
        return await self.store.claim_in_flight(
            ids, owner=self.owner, now=self.clock(), seconds=self.lease_seconds, limit=POLL_BATCH, origin=self.origin
        )

    async def claim_deliveries(self, limit: int) -> list[tuple[Job, bool]]:
        """Up to `limit` finished jobs for this process to post, each with whether a post may already exist: an
        earlier deliverer stopped while holding it, or an earlier try failed (perhaps after Discord took the post)."""
        if limit <= 0:
            return []
        taken = await self._claim(("succeeded",), limit=limit, abandoned=True)
        abandoned = {job.id for job in taken}
        if len(taken) < limit:
            taken += await self._claim(("succeeded",), limit=limit - len(taken), abandoned=False)
        return [(job, job.id in abandoned or job.delivery_attempts > 0) for job in taken]

    async def renew(self, job: Job) -> bool:
        """Extend this process's claim on a job during long work; False when it was lost (claimed again)."""
        lease = self.lease_of(job)
        return lease is not None and await self.store.renew_lease(
            job.id, lease, now=self.clock(), seconds=self.lease_seconds
        )

    async def release_claims(self, jobs: Iterable[Job | InFlight]) -> None:
        """Give back this process's claims on these jobs (their work is done, or left for the next tick)."""
        held = [(job.id, lease) for job in jobs if (lease := self.lease_of(job)) is not None]
        await self.store.release_leases(held, self.clock())

    async def release(self, job: Job, reason: str) -> Job | None:
        """Give up a reserved job that was never sent (its card could not be posted): its credits are freed."""
        if job.attempts:
            return None
        now = self.clock()
        if not await self.store.transition(job.id, "reserved", "cancelled", error=reason, finished_at=now,
                                           updated_at=now):  # fmt: skip
            return None
        return await self.store.get_job(job.id)

    async def _queue(self, job: Job, why: str) -> Job:
        """Park a reserved job (its credits stay reserved) until the dispatcher finds a free slot."""
        if await self.store.transition(job.id, "reserved", "queued", lease=self.lease_of(job), updated_at=self.clock()):
            log.info("job %s queued: %s", job.id, why)
        current = await self.store.get_job(job.id)
        assert current is not None
        return current

    async def _submit(self, job: Job, *, first_frame: str | None = None) -> Job:
        """Send a reserved job. A refusal fails it; a lost answer leaves it reserved and looked up by its id."""
        attempts = job.attempts + 1
        now = self.clock()
        lease = self.lease_of(job)
        # Fenced: a job moved or claimed by another process since (this one paused past its lease) is not sent.
        if not await self.store.update_job(job.id, "reserved", lease=lease, attempts=attempts, updated_at=now):
            log.warning("job %s is no longer this process's to send; not sending it", job.id)
            return await self.store.get_job(job.id) or job
        job = replace(job, attempts=attempts, updated_at=now)
        try:
            task = await self._send(job, first_frame)
        except KlingNotSent as exc:
            return await self._cannot_send(job, exc, "the video service is failing; the job waits for it")
        except KlingUnavailable as exc:
            # The task may exist, or appear later: settle it by its external id before anything is sent again.
            log.warning("job %s: submit attempt %d got no usable answer: %s", job.id, attempts, exc)
            await self.store.update_job(job.id, "reserved", lease=lease, uncertain_since=now, lookups=1, updated_at=now)
            return replace(job, uncertain_since=now, lookups=1)
        except KlingRateLimited as exc:
            return await self._cannot_send(job, exc, f"the provider is busy ({exc})")
        except (KlingAuthError, KlingAccountError) as exc:
            self._pause(exc)
            return await self._cannot_send(job, exc, f"submissions paused ({exc})")
        except KlingError as exc:
            return await self._refused(job, exc)
        crash_point("after_submit")
        self.pause.worked()
        return await self._adopt(job, task, "reserved")

    async def _cannot_send(self, job: Job, error: KlingError, why: str) -> Job:
        # The bot queues the job for later; the command line has no queue, so it ends the job with the reason.
        if self.origin == "discord":
            return await self._queue(job, why)
        return await self._refused(job, error)

    async def _refused(self, job: Job, error: KlingError) -> Job:
        reason = explain(error)
        log.warning("job %s refused by the provider: %s", job.id, error)
        failed = await self._fail(job, reason, "reserved")
        raise SubmitRefused(failed or job, reason, error) from None

    async def _send(self, job: Job, first_frame: str | None) -> KlingTask:
        if job.kind == "text":
            return await self.kling.submit_text(
                job.prompt,
                aspect_ratio=job.aspect_ratio or "16:9",
                duration=job.duration,
                resolution=job.resolution,
                external_task_id=job.id,
                callback_url=self.callback_url,
            )
        if job.image_url is None and first_frame is None:
            first_frame = await self._stored_frame(job)
        return await self.kling.submit_image(
            job.prompt or None,
            base64_frame=first_frame if job.image_url is None else None,
            url_frame=job.image_url or job.frame_url,
            duration=job.duration,
            resolution=job.resolution,
            external_task_id=job.id,
            callback_url=self.callback_url,
        )

    async def _stored_frame(self, job: Job) -> str:
        stored = await self.store.get_image(job.image_sha256 or "")
        if stored is None:
            raise KlingBadRequest("the first-frame image of this job is missing from the database")
        return await base64_text(stored.data)

    async def _adopt(self, job: Job, task: KlingTask, previous: str) -> Job:
        """Record the provider's task for a job we sent, then apply whatever state it is already in."""
        now = self.clock()
        moved = await self.store.transition(
            job.id,
            previous,
            "submitted",
            lease=self.lease_of(job),
            provider_task_id=task.id,
            provider_status=task.status,
            submitted_at=now,
            updated_at=now,
            # Sent: the claim ends with the move, so a callback's hint or a poll (of any process) takes it at once.
            **_released(now),
        )
        if not moved:
            log.info("job %s was settled elsewhere while submitting", job.id)
        current = await self.store.get_job(job.id)
        assert current is not None
        log.info("job %s submitted as task %s", job.id, task.id)
        if moved and task.status != "submitted":
            return (await self._apply(current, task)) or current
        return current

    async def _fail(self, job: Job | InFlight, reason: str, previous: str | tuple[str, ...]) -> Job | None:
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
            **_released(now),
        ):
            return None
        return await self.store.get_job(job.id)

    def _pause(self, error: KlingError) -> None:
        if self.pause.pause(
            english(
                "The video service refused the bot's account: {reason} ({error})", reason=explain(error), error=error
            )
        ):
            log.error("submissions paused for %.0fs: %s", self.pause.seconds, error)

    def take_alerts(self) -> list[str]:
        """Operator alerts raised since the last call (each once, not once per job)."""
        return self.pause.take_alerts()

    async def queue_order(self) -> list[Job]:
        """Queued jobs in the order they will be sent: round-robin across members, oldest first within each."""
        return fair_order(await self.store.jobs_in(("queued",), origin=self.origin))

    async def dispatch_once(self) -> list[JobChange]:
        """Send queued jobs while the provider has room, fairly across members."""
        if self.pause.holding():
            return []
        if self.kling.breaker.refusing:
            return []
        # The free slots are counted in the whole fleet and taken in the same transaction (see Storage.claim_queued).
        now = self.clock()
        taken = await self.store.claim_queued(
            capacity=self.provider_concurrency,
            owner=self.owner,
            now=now,
            seconds=self.reserved_grace,
            origin=self.origin,
            order=fair_order,
        )
        changes: list[JobChange] = []
        try:
            for index, job in enumerate(taken):
                try:
                    sent = await self._submit(job)
                except SubmitRefused as refused:
                    sent = refused.job
                if sent.status == "queued":  # the provider is full or paused: the rest wait too
                    for waiting in taken[index + 1 :]:
                        await self._queue(waiting, "the video service is full or paused")
                    break
                changes.append(JobChange(sent, "queued"))
        finally:
            await self.release_claims(taken)
        return changes

    async def cancel(self, job_id: str, *, guild_id: int | None, user_id: int, moderator: bool = False) -> Job:
        """Cancel a job not yet at the provider; raises InvalidRequest saying truthfully why it cannot be.

        A queued job is cancelled and its credits freed at once. A job whose submit got no answer is not sent
        again; whether the provider made it anyway is known within minutes (then it is delivered and charged)."""
        job = await self.store.get_job(job_id)
        if job is None or job.guild_id != guild_id or (job.user_id != user_id and not moderator):
            raise InvalidRequest(
                english("There is no such job of yours here; only its requester or a moderator can cancel it.")
            )
        now = self.clock()
        if job.status == "queued" and await self.store.transition(
            job.id, "queued", "cancelled", error=english("cancelled"), finished_at=now, updated_at=now
        ):
            log.info("job %s cancelled by %s", job.id, user_id)
        elif job.status == "reserved" and job.uncertain_since is not None:
            await self.store.update_job(job.id, "reserved", cancel_requested=True, updated_at=now)
            log.info("job %s: cancel requested by %s while its submit is uncertain", job.id, user_id)
        elif job.status in WAITING:
            raise InvalidRequest(
                english("That job is being sent to the video service right now; try again in a moment.")
            )
        else:
            raise InvalidRequest(
                english(
                    "Only a job not yet at the video service can be cancelled; once there, it cannot be stopped "
                    "(and the service charges for it)."
                )
            )
        cancelled = await self.store.get_job(job.id)
        assert cancelled is not None
        return cancelled

    async def poll_once(self, *, sweep: bool = True) -> list[JobChange]:
        """Settle reserved jobs, query every job at the provider that is due (batched), time out, send queued ones.

        `sweep`: also look for jobs that waited too long to be sent (one process of a fleet does it at a time)."""
        changes = await self._settle_reserved(everything=False)
        in_flight = await self.store.in_flight(origin=self.origin)  # narrow rows: the tick reads no more
        due = {job.id for job in await self._due(in_flight)}
        overdue = {job.id for job in in_flight if self._past_late_limit(job)}
        # Only the jobs with work to do now are claimed; one another process is asking about is skipped.
        claimed = await self._claim_in_flight([*due | overdue]) if due | overdue else []
        try:
            moved = await self._ask([job for job in claimed if job.id in due])
            changes.extend(moved)
            moved_ids = {change.job.id for change in moved}
            changes.extend(await self._give_up_late([j for j in claimed if j.id in overdue and j.id not in moved_ids]))
        finally:
            await self.release_claims(claimed)
        if sweep:
            changes.extend(await self._time_out())
        changes.extend(await self.dispatch_once())  # last, so the slots freed just now are used at once
        return changes

    async def _ask(self, jobs: Sequence[Job | InFlight]) -> list[JobChange]:
        """Ask the provider about these claimed jobs (in batched queries) and move each where its task is."""
        by_task = {job.provider_task_id: job for job in jobs if job.provider_task_id}
        if not by_task:
            return []
        now = self.clock()
        self.last_asked.update((job.id, now) for job in jobs)
        try:
            tasks = await self.kling.query(list(by_task))
        except KlingError as exc:
            log.warning("poll: query of %d jobs failed: %s", len(by_task), exc)
            return []
        changes = []
        for task in tasks:
            job = by_task.pop(task.id, None)
            if job is None:
                log.warning("poll: the provider answered for a task we did not ask about: %s", task.id)
                continue
            change = await self._apply(job, task)
            if change is not None:
                changes.append(JobChange(change, job.status))
        return changes

    async def hinted_jobs(self, task_ids: Sequence[str]) -> list[Job]:
        """This service's jobs at the provider among the tasks callbacks named, found with one query (a flood of
        made-up ids costs one query per batch, not one per id)."""
        found = await self.store.jobs_by_tasks(list(dict.fromkeys(task_ids)))
        return [job for job in found if job.status in AT_PROVIDER and job.origin == self.origin]

    async def refresh(self, jobs: Sequence[Job]) -> list[JobChange]:
        """Ask the provider now about jobs callbacks named (`hinted_jobs`; in one batched query); its answers, not
        the callbacks, move the jobs."""
        if not jobs:
            return []
        wanted = [job.id for job in jobs]
        # A job another process holds is skipped: that process is asking about it already.
        claimed = await self._claim(AT_PROVIDER, limit=len(wanted), ids=wanted)
        try:
            return await self._ask(claimed)
        finally:
            await self.release_claims(claimed)

    def is_late(self, job: Job) -> bool:
        """At the provider for longer than JOB_TIMEOUT_MINUTES: still expected, asked about less often."""
        return job.status in AT_PROVIDER and self.clock() - (job.submitted_at or job.created_at) > self.job_timeout

    async def _typical(self, jobs: Sequence[Job | InFlight]) -> dict[Shape, float | None]:
        """The median render time of each shape among these jobs (one query per shape)."""
        return {shape: await self.estimate_seconds(*shape) for shape in {shape_of(job) for job in jobs}}

    async def _due(self, jobs: list[Polled]) -> list[Polled]:
        """The jobs worth asking about now (see `scheduling.due_for_poll`)."""
        if not self.adaptive or not jobs:
            return jobs
        due = due_for_poll(
            jobs,
            now=self.clock(),
            last_asked=self.last_asked,
            typical=await self._typical(jobs),
            job_timeout=self.job_timeout,
        )
        # Forget jobs that left the provider, so the map stays as small as the jobs there.
        self.last_asked = {job.id: self.last_asked[job.id] for job in jobs if job.id in self.last_asked}
        return due

    async def suggested_delay(self, base: float) -> float:
        """How long the poll loop should sleep: shorter while a job is around its expected finish."""
        if not self.adaptive:
            return base
        jobs = await self.store.in_flight(origin=self.origin)
        return poll_delay(jobs, now=self.clock(), typical=await self._typical(jobs), base=base)

    async def resume(self) -> list[JobChange]:
        """After a restart: settle every job left `reserved` by its external id before sending anything again."""
        return await self._settle_reserved(everything=True)

    async def _settle_reserved(self, *, everything: bool) -> list[JobChange]:
        """Send reserved jobs nobody is sending; find lost submits at the provider, or send them again once
        look-ups by external id have not found them, at least twice over `lookup_window`."""
        changes = []
        now = self.clock()
        # Claimed: a job a command or a dispatch (of any process) is sending holds its lease and is not taken.
        claimed = await self._claim(("reserved",), seconds=self.reserved_grace)
        try:
            for job in claimed:
                if job.uncertain_since is None:
                    if not everything and now - job.updated_at < self.reserved_grace:
                        continue  # a command or a dispatch is sending it right now
                    if job.attempts:
                        # Sent before a crash, its answer unknown: a lost submit from the time of that attempt.
                        job = replace(job, uncertain_since=job.updated_at, lookups=0)
                        await self.store.update_job(
                            job.id,
                            "reserved",
                            lease=self.lease_of(job),
                            uncertain_since=job.uncertain_since,
                            lookups=0,
                            updated_at=now,
                        )
                settled = await self._settle_one(job, now)
                if settled is not None and settled.status != "reserved":
                    changes.append(JobChange(settled, "reserved"))
        finally:
            await self.release_claims(claimed)
        return changes

    async def _settle_one(self, job: Job, now: float) -> Job | None:
        if job.uncertain_since is None:  # never sent (the bot stopped between the reservation and the send)
            return await self._submit_quietly(job)
        try:
            task = await self.kling.find_external(job.id)
        except KlingError as exc:
            log.warning("job %s: lookup by external id failed: %s", job.id, exc)
            return None
        if task is not None:
            log.info("job %s found at the provider as %s; not sending it again", job.id, task.id)
            return await self._adopt(job, task, "reserved")
        lookups = job.lookups + 1
        lease = self.lease_of(job)
        if not await self.store.update_job(job.id, "reserved", lease=lease, lookups=lookups, updated_at=now):
            return None  # settled or claimed elsewhere meanwhile
        if lookups < 2 or now - job.uncertain_since < self.lookup_window:
            return None
        minutes = (now - job.uncertain_since) / 60
        if job.cancel_requested:
            log.info("job %s: absent after %.1f minutes of look-ups; cancelled as asked", job.id, minutes)
            return await self._end_unsent(job, "cancelled", english("cancelled; the video service never had it"))
        if job.attempts >= MAX_SUBMIT_ATTEMPTS:
            reason = english(
                "The video service did not take this job after {tries} tries "
                "(checked for {minutes} minutes); nothing was charged.",
                tries=job.attempts,
                minutes=f"{minutes:.0f}",
            )
            return await self._end_unsent(job, "failed", reason)
        log.info("job %s: absent after %d look-ups over %.1f minutes; sending it again", job.id, lookups, minutes)
        await self.store.update_job(job.id, "reserved", lease=lease, uncertain_since=None, lookups=0, updated_at=now)
        return await self._submit_quietly(replace(job, uncertain_since=None, lookups=0))

    async def _submit_quietly(self, job: Job) -> Job:
        try:
            return await self._submit(job)
        except SubmitRefused as refused:
            return refused.job

    async def _end_unsent(self, job: Job, status: str, reason: str) -> Job | None:
        now = self.clock()
        if not await self.store.transition(
            job.id, "reserved", status, lease=self.lease_of(job), error=reason, finished_at=now, updated_at=now
        ):
            return None
        return await self.store.get_job(job.id)

    async def _apply(self, job: Job | InFlight, task: KlingTask) -> Job | None:
        """Move a job to where the provider says its task is; returns the new row if it moved."""
        if task.status in AT_PROVIDER and (task.status, job.status) != ("processing", "submitted"):
            return None  # still rendering, as we knew (most answers of a tick): nothing to write
        now = self.clock()
        lease = self.lease_of(job)
        if task.status == "processing":
            moved = await self.store.transition(
                job.id, "submitted", "processing", lease=lease, provider_status=task.status, updated_at=now
            )
        elif task.status == "succeeded":
            video = task.video
            if video is None:
                log.warning("job %s: task %s succeeded without a video", job.id, task.id)
                return await self._fail(job, english("The video service finished but sent no video."), AT_PROVIDER)
            billed = _billed_millicredits(task)
            moved = await self.store.transition(
                job.id,
                AT_PROVIDER,
                "succeeded",
                lease=lease,
                provider_status=task.status,
                video_url=video.url,
                video_seconds=video.seconds,
                billed_amount=task.billed_amount,
                cost_billed=billed,
                finished_at=now,
                updated_at=now,
            )
        elif task.status == "failed":
            reason = task.message or english("The video service could not make this video.")
            return await self._fail(job, english("The video service failed: {reason}", reason=reason), AT_PROVIDER)
        else:  # the client logged this status once; keep asking
            log.debug("job %s: unknown provider status %r; still waiting", job.id, task.status)
            await self.store.update_job(job.id, AT_PROVIDER, lease=lease, provider_status=task.status, updated_at=now)
            return None
        return await self.store.get_job(job.id) if moved else None

    async def _time_out(self) -> list[JobChange]:
        """Fail jobs that never reached the provider within JOB_TIMEOUT_MINUTES."""
        now = self.clock()
        changes = []
        minutes = self.job_timeout / 60
        # Claimed: a job being sent right now (by any process) holds its lease and is not failed under it.
        stale = await self._claim(WAITING, created_before=now - self.job_timeout)
        try:
            for job in stale:
                if job.attempts and job.status == "reserved":
                    continue  # perhaps at the provider: settled by its external id, never timed out blindly
                reason = english(
                    "The video service could not take this job for {minutes} minutes, so it was never sent; "
                    "nothing was charged.",
                    minutes=f"{minutes:g}",
                )
                failed = await self._fail(job, reason, job.status)
                if failed is not None:
                    log.warning("job %s: never sent within %g minutes; failed", job.id, minutes)
                    changes.append(JobChange(failed, job.status))
        finally:
            await self.release_claims(stale)
        return changes

    def _past_late_limit(self, job: Job | InFlight) -> bool:
        return self.clock() - (job.submitted_at or job.created_at) > self.job_timeout + self.late_limit

    async def _give_up_late(self, claimed: Sequence[Job | InFlight]) -> list[JobChange]:
        """Fail claimed jobs still at the provider a day after JOB_TIMEOUT_MINUTES (their credits are given back)."""
        changes = []
        hours = (self.job_timeout + self.late_limit) / 3600
        for job in claimed:
            reason = english(
                "The video did not arrive within {hours} hours; your credits were given back.", hours=f"{hours:g}"
            )
            failed = await self._fail(job, reason, AT_PROVIDER)
            if failed is not None:
                log.warning("job %s given up after %g hours at the provider", job.id, hours)
                changes.append(JobChange(failed, job.status))
        return changes

    async def mark_delivered(
        self, job_id: str, *, result_message_id: int | None = None, lease: Lease | None = None
    ) -> bool:
        """The video reached the member: `succeeded` becomes `delivered`, once (and, with the deliverer's `lease`,
        only while that lease still holds)."""
        now = self.clock()
        return await self.store.transition(
            job_id,
            "succeeded",
            "delivered",
            lease=lease,
            result_message_id=result_message_id,
            delivered_at=now,
            updated_at=now,
            **_released(now),
        )

    async def mark_undeliverable(self, job_id: str, reason: str, *, lease: Lease | None = None) -> bool:
        """Every way to post the video failed; the link stays in the job's row for the member's history."""
        now = self.clock()
        return await self.store.transition(
            job_id, "succeeded", "undeliverable", lease=lease, error=reason, updated_at=now, **_released(now)
        )

    async def note_delivery_problem(self, job: Job, reason: str, *, lease: Lease | None = None) -> int:
        """Count one failed try at fetching or posting a finished video; returns the tries so far."""
        tries = job.delivery_attempts + 1
        await self.store.update_job(
            job.id,
            "succeeded",
            lease=lease or self.lease_of(job),
            delivery_attempts=tries,
            error=reason,
            updated_at=self.clock(),
        )
        return tries

    async def fail_download(self, job: Job, reason: str) -> Job | None:  # fenced by the lease `job` carries
        """The provider's video never came (its link is dead or not a video): fail the job, releasing its credits."""
        return await self._fail(
            job, english("The finished video could not be fetched: {reason}.", reason=reason), "succeeded"
        )

    # --- reads for the front ends -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        return await self.store.get_job(job_id)

    async def find(
        self, guild_id: int, prefix: str, *, user_id: int | None, statuses: Sequence[str] | None = None
    ) -> Job | None:
        """A job of this server by the first characters of its id: a member's own, or any (user_id None: a
        moderator's look-up). Another server's job is never found, whatever its id."""
        return await self.store.find_job(guild_id, prefix.strip().lower(), user_id=user_id, statuses=statuses)

    async def member_jobs(
        self, guild_id: int, user_id: int, *, statuses: Sequence[str] | None = None, limit: int = 10, offset: int = 0
    ) -> list[Job]:
        """A member's jobs in one server, newest first."""
        return await self.store.member_jobs(guild_id, user_id, statuses=statuses, limit=limit, offset=offset)

    async def count_member_jobs(self, guild_id: int, user_id: int) -> int:
        """How many jobs a member has made in one server."""
        return await self.store.count_member_jobs(guild_id, user_id)

    async def in_state(self, *statuses: str) -> list[Job]:
        """This service's jobs in any of these states, oldest first."""
        return await self.store.jobs_in(statuses, origin=self.origin)

    async def count_in_state(self, *statuses: str) -> int:
        """How many jobs are in any of these states (an index count, no rows read)."""
        return await self.store.count_in(statuses)

    async def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each state (for the metrics)."""
        return await self.store.count_by_status()

    async def first_frame(self, job: Job) -> FirstFrame | None:
        """The stored first frame of an image job (for a re-roll), or None."""
        stored = await self.store.get_image(job.image_sha256) if job.image_sha256 else None
        return FirstFrame(stored.data, stored.mime, stored.width, stored.height, None) if stored else None

    async def chain(self, job: Job) -> list[Job]:
        """The segments that end with `job`, root first: each job's parent, then its parent's, up to
        MAX_CHAIN (a longer or broken chain starts at the oldest segment still known)."""
        segments = [job]
        while segments[0].parent_id is not None and len(segments) < MAX_CHAIN:
            parent = await self.store.get_job(segments[0].parent_id)
            if parent is None or any(s.id == parent.id for s in segments):
                break
            segments.insert(0, parent)
        return segments

    async def set_discord_refs(
        self, job_id: str, *, message_id: int | None, thread_id: int | None, status_message_id: int | None
    ) -> None:
        """Remember where a job lives in Discord, whatever state it has reached meanwhile."""
        await self.store.update_job(
            job_id,
            (*OPEN, *FINAL),
            message_id=message_id,
            thread_id=thread_id,
            status_message_id=status_message_id,
            updated_at=self.clock(),
        )

    async def set_frame_url(self, job_id: str, url: str) -> None:
        """A public URL of a reserved job's first frame (posted on its card), for a gateway that refuses Base64."""
        await self.store.update_job(job_id, "reserved", frame_url=url, updated_at=self.clock())

    async def estimate_seconds(self, duration: int, resolution: str) -> float | None:
        """The median render time of recent finished jobs of this shape, or None without history."""
        times = await self.store.render_times(duration, resolution)
        return statistics.median(times) if times else None

    # --- how the member is told, and moderator review ---------------------------------------------------------

    async def notify_preference(self, user_id: int) -> str:
        """'mention' (the default), 'dm' or 'off'."""
        return await self.store.notify_preference(user_id)

    async def set_notify_preference(self, user_id: int, mode: str) -> None:
        """Keep how a member wants to be told their videos are done."""
        if mode not in NOTIFY_MODES:
            raise InvalidRequest(f"Choose one of {', '.join(NOTIFY_MODES)}, not {mode!r}.")
        await self.store.set_notify_preference(user_id, mode)

    async def hold_for_review(self, job: Job) -> Job:
        """A finished video waits for a moderator: review_state becomes 'pending' (once) before anything is
        posted, so no path delivers it to the member meanwhile. Returns the job as stored."""
        await self.store.decide_review(job.id, None, "succeeded", review_state="pending", updated_at=self.clock())
        return await self.store.get_job(job.id) or job

    async def set_review_message(self, job_id: str, message_id: int) -> None:
        """Remember the review channel's message that carries the job's Approve and Reject buttons."""
        await self.store.update_job(job_id, "succeeded", review_message_id=message_id, updated_at=self.clock())

    async def approve(self, job_id: str) -> bool:
        """A moderator approved the video: it is delivered like any other (with all its tries: refused posts to the
        review channel do not count against them). False when already decided."""
        return await self.store.decide_review(job_id, "pending", "succeeded", review_state="approved",
                                              delivery_attempts=0, updated_at=self.clock())  # fmt: skip

    async def reject(self, job_id: str, reason: str) -> Job | None:
        """A moderator rejected the video: the job ends `rejected`. Its credits stay spent (the provider billed
        the render), so it counts as used like a delivered job. None when already decided."""
        now = self.clock()
        if not await self.store.decide_review(
            job_id, "pending", "rejected", review_state="rejected", review_reason=reason, updated_at=now
        ):
            return None
        return await self.store.get_job(job_id)


def _released(now: float) -> dict[str, Any]:
    """The changes that end a claim with the write that finishes its work (the release time orders later claims)."""
    return {"lease_owner": None, "lease_until": now}


def _billed_millicredits(task: KlingTask) -> int | None:
    if task.billed_amount is None:
        return None
    try:
        return quota.parse_billed_amount(task.billed_amount)
    except ValueError:
        log.warning("task %s: unreadable billed amount %r", task.id, task.billed_amount)
        return None
