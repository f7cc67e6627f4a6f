"""Polling and settling: the jobs at the provider asked about (batched, adaptively, late ones less often),
the jobs callbacks named, lost or crashed submits settled by their external id, time-outs, and a task record
applied to its job."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import replace

from bot.core import quota
from bot.core.i18n import english
from bot.core.job_base import JobBase, JobChange, SubmitRefused
from bot.core.model import AT_PROVIDER, WAITING, Claimed, InFlight, Job
from bot.core.scheduling import Shape, due_for_poll, poll_delay, shape_of
from bot.provider.errors import KlingError
from bot.provider.records import KlingTask

log = logging.getLogger(__name__)

MAX_SUBMIT_ATTEMPTS = 3


class Polling(JobBase):
    """Follow jobs to the end: poll, refresh hinted jobs, settle reserved jobs, time out, give up late."""

    async def poll_once(self, *, sweep: bool = True) -> list[JobChange]:
        """Settle reserved jobs, query every job at the provider that is due (batched), time out, send queued ones.

        `sweep`: also look for jobs that waited too long to be sent (one process of a fleet does it at a time)."""
        changes = await self._settle_reserved(everything=False)
        # Narrow rows, the tick reads no more; each says when the fleet last asked about the job.
        in_flight = await self.store.in_flight(origin=self.origin, now=self.clock())
        due = {job.id for job in await self._due(in_flight)}
        given_up_before = self._given_up_before()  # one clock read for 10,000 jobs
        overdue = {job.id for job in in_flight if (job.submitted_at or job.created_at) < given_up_before}
        # Only the jobs with work to do now are claimed; one another process is asking about, or claimed since the
        # read (it may have asked meanwhile), is skipped. The claim records the time asked for the fleet.
        wanted = [job for job in in_flight if job.id in due or job.id in overdue]
        claimed = await self._claim_in_flight(wanted) if wanted else []
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

    async def _ask(self, jobs: Sequence[Job | Claimed]) -> list[JobChange]:
        """Ask the provider about these claimed jobs (in batched queries) and move each where its task is."""
        by_task = {job.provider_task_id: job for job in jobs if job.provider_task_id}
        if not by_task:
            return []
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
            if _as_known(job.status, task.status):
                continue  # most answers of a tick: no coroutine of `_apply` for 10,000 of them
            change = await self._apply(job, task)
            if change is not None:
                changes.append(JobChange(change, job.status))
        return changes

    async def hinted_jobs(self, task_ids: Sequence[str]) -> list[Job]:
        """This service's jobs at the provider among the tasks callbacks named, found with one query (a flood of
        made-up ids costs one query per batch, not one per id)."""
        found = await self.store.jobs_by_tasks(list(dict.fromkeys(task_ids)))
        return [job for job in found if job.status in AT_PROVIDER and job.origin == self.origin]

    async def refresh(self, jobs: Sequence[Job]) -> tuple[list[JobChange], list[Job]]:
        """Ask the provider now about jobs callbacks named (`hinted_jobs`; in one batched query); its answers, not
        the callbacks, move the jobs. Also returns the jobs skipped because someone held them: the holder may be
        an intake that has not let go yet (not asking the provider at all), so the caller asks again once free."""
        if not jobs:
            return [], []
        wanted = [job.id for job in jobs]
        claimed = await self._claim(AT_PROVIDER, limit=len(wanted), ids=wanted, asking=True)
        taken = {job.id for job in claimed}
        try:
            return await self._ask(claimed), [job for job in jobs if job.id not in taken]
        finally:
            await self.release_claims(claimed)

    def is_late(self, job: Job) -> bool:
        """At the provider for longer than JOB_TIMEOUT_MINUTES: still expected, asked about less often."""
        return job.status in AT_PROVIDER and self.clock() - (job.submitted_at or job.created_at) > self.job_timeout

    async def _typical(self, jobs: Sequence[Job | InFlight]) -> dict[Shape, float | None]:
        """The median render time of each shape among these jobs (one query per shape)."""
        return {shape: await self.estimate_seconds(*shape) for shape in {shape_of(job) for job in jobs}}

    async def _due(self, jobs: list[InFlight]) -> list[InFlight]:
        """The jobs worth asking about now (see `scheduling.due_for_poll`); every one, when not adaptive."""
        if not self.adaptive or not jobs:
            return jobs
        return due_for_poll(
            jobs,
            now=self.clock(),
            typical=await self._typical(jobs),
            job_timeout=self.job_timeout,
            interval=self.poll_interval,
        )

    async def suggested_delay(self, base: float) -> float:
        """How long the poll loop should sleep: shorter while a job is around its expected finish."""
        if not self.adaptive:
            return base
        jobs = await self.store.in_flight(origin=self.origin, now=self.clock())
        return poll_delay(jobs, now=self.clock(), typical=await self._typical(jobs), base=base)

    async def estimate_seconds(self, duration: int, resolution: str) -> float | None:
        """The median render time of recent finished jobs of this shape, or None without history."""
        times = await self.store.render_times(duration, resolution)
        return statistics.median(times) if times else None

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

    async def _apply(self, job: Job | Claimed, task: KlingTask) -> Job | None:
        """Move a job to where the provider says its task is; returns the new row if it moved."""
        if _as_known(job.status, task.status):
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

    def _given_up_before(self) -> float:
        """A job at the provider since before this is past the late limit (a day after JOB_TIMEOUT_MINUTES)."""
        return self.clock() - self.job_timeout - self.late_limit

    def _past_late_limit(self, job: Job | InFlight) -> bool:
        return (job.submitted_at or job.created_at) < self._given_up_before()

    async def _give_up_late(self, claimed: Sequence[Job | Claimed]) -> list[JobChange]:
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


def _as_known(job_status: str, task_status: str) -> bool:
    """The provider says the task still renders, as the job's state already says: nothing to write."""
    return task_status in AT_PROVIDER and (task_status, job_status) != ("processing", "submitted")


def _billed_millicredits(task: KlingTask) -> int | None:
    if task.billed_amount is None:
        return None
    try:
        return quota.parse_billed_amount(task.billed_amount)
    except ValueError:
        log.warning("task %s: unreadable billed amount %r", task.id, task.billed_amount)
        return None
