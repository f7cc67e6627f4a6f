"""Dispatch: queued jobs sent in fair order as the fleet has slots; a job submitted (its first frame, its
external id); the account pause and the operator alerts it raises."""

from __future__ import annotations

import logging
from dataclasses import replace

from bot.core.i18n import english
from bot.core.job_base import JobBase, JobChange, SubmitRefused, explain, released
from bot.core.model import Job
from bot.core.options import JobOptions
from bot.core.scheduling import fair_order
from bot.crashpoints import crash_point
from bot.media.images import base64_text
from bot.provider.errors import (
    KlingAccountError,
    KlingAuthError,
    KlingBadRequest,
    KlingError,
    KlingNotSent,
    KlingRateLimited,
    KlingUnavailable,
)
from bot.provider.records import KlingTask

log = logging.getLogger(__name__)


class Dispatch(JobBase):
    """Send jobs: take a slot, queue, submit, adopt the provider's task, pause on a refused account."""

    async def _take_slot(self, job: Job) -> bool:
        """Whether the job may be sent now: nobody waits and the fleet holds fewer than PROVIDER_CONCURRENCY."""
        lease = self.lease_of(job)
        if lease is None:  # not reserved by this process: the dispatcher sends it in turn
            return False
        return await self.store.take_slot(
            job.id, lease, capacity=self.provider_concurrency, now=self.clock(), seconds=self.reserved_grace
        )

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
            task, sound_dropped = await self._send(job, first_frame)
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
        if sound_dropped and not job.sound_dropped:
            job = await self._sound_dropped(job)
        return await self._adopt(job, task, "reserved")

    async def _sound_dropped(self, job: Job) -> Job:
        """The job went without its sound choice (the gateway takes none): charged as silent, and flagged so that
        its member is told."""
        cost = job.options.cost(self.rates, sound_offered=False)
        log.info("job %s: sent without its sound choice (%s); reserving %d", job.id, job.sound, cost)
        await self.store.update_job(
            job.id, "reserved", lease=self.lease_of(job), sound_dropped=True, cost_estimate=cost,
            updated_at=self.clock(),
        )  # fmt: skip
        return replace(job, sound_dropped=True, cost_estimate=cost)

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

    async def _send(self, job: Job, first_frame: str | None) -> tuple[KlingTask, bool]:
        """Submit the job, and say whether its sound choice was left out. A gateway that refuses the choice gets
        the job again without it (the refusal made no task, so the same external id is free) and is remembered as
        taking none."""
        if job.image_url is None and first_frame is None and job.kind == "image":
            first_frame = await self._stored_frame(job.image_sha256, "first")
        options = job.options
        if options["sound"] is None or not self.kling.takes_sound:
            return await self._send_as(job, options.without("sound"), first_frame), options["sound"] is not None
        try:
            return await self._send_as(job, options, first_frame), False
        except KlingBadRequest as refused:
            log.info("job %s: refused with settings.audio (%s); sending it again without", job.id, refused)
            task = await self._send_as(job, options.without("sound"), first_frame)  # a refusal again is not sound's
            self.kling.refuses_sound(refused)
            return task, True

    async def _send_as(self, job: Job, options: JobOptions, first_frame: str | None) -> KlingTask:
        if job.kind == "text":
            return await self.kling.submit_text(
                job.prompt,
                options=options,
                external_task_id=job.id,
                callback_url=self.callback_url,
            )
        return await self.kling.submit_image(
            job.prompt or None,
            base64_frame=first_frame if job.image_url is None else None,
            url_frame=job.image_url or job.frame_url,
            # Its bytes are in `images` as the first frame's are, and always go as Base64 (it has no URL of its own).
            end_frame=await self._stored_frame(job.end_image_sha256, "last") if job.end_image_sha256 else None,
            options=options,
            external_task_id=job.id,
            callback_url=self.callback_url,
        )

    async def _stored_frame(self, digest: str | None, which: str) -> str:
        stored = await self.store.get_image(digest or "")
        if stored is None:
            raise KlingBadRequest(f"the {which}-frame image of this job is missing from the database")
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
            **released(now),
        )
        if not moved:
            log.info("job %s was settled elsewhere while submitting", job.id)
        current = await self.store.get_job(job.id)
        assert current is not None
        log.info("job %s submitted as task %s", job.id, task.id)
        if moved and task.status != "submitted":
            return (await self._apply(current, task)) or current
        return current

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
