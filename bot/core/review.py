"""The moderators' review of finished videos, the one decision both front ends (the buttons, the dashboard) call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from bot.core.i18n import english
from bot.core.jobs import JobService
from bot.core.model import AuditEntry, Job

DECIDED = {"approve": english("video {job} approved"), "reject": english("video {job} rejected")}
# A server's videos waiting for review are few (each holds a paid render); the page shows at most this many.
PENDING_SHOWN = 50


class ReviewRefused(Exception):
    """The decision cannot be made: `why` is 'unknown' (no such job in this server) or 'decided' (already)."""

    def __init__(self, why: str, job: Job | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.job = job


class Review:
    """Approve or reject a video waiting for review, once, with its audit row (`source`: where it was decided)."""

    def __init__(self, jobs: JobService, clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.clock = clock

    async def waiting(self, guild_id: int, job_id: str) -> Job:
        """The job if it still waits for a moderator in this server; else ReviewRefused."""
        job = await self.jobs.get(job_id)
        if job is None or job.guild_id != guild_id:
            raise ReviewRefused("unknown")
        if job.status != "succeeded" or job.review_state != "pending":
            raise ReviewRefused("decided", job)
        return job

    async def pending(self, guild_id: int) -> list[Job]:
        """A server's videos waiting for review, newest first."""
        jobs = await self.jobs.member_jobs(guild_id, None, statuses=("succeeded",), limit=PENDING_SHOWN)
        return [job for job in jobs if job.review_state == "pending"]

    def _audit(self, job: Job, moderator_id: int, action: str, reason: str | None, source: str) -> AuditEntry:
        """The decision's audit row: on the video's member, before and after naming the video."""
        assert job.guild_id is not None
        before = english("video {job} waiting for review", job=job.id[:8])
        after = english(DECIDED[action], job=job.id[:8])
        return AuditEntry(job.guild_id, moderator_id, action, job.user_id, before, after, reason, self.clock(), source)

    async def approve(self, guild_id: int, moderator_id: int, job_id: str, *, source: str = "discord") -> Job:
        """The video goes to its thread: the caller wakes the delivery; returns the job as decided. ReviewRefused
        when it cannot."""
        job = await self.waiting(guild_id, job_id)
        if not await self.jobs.approve(job_id, self._audit(job, moderator_id, "approve", None, source)):
            raise ReviewRefused("decided", job)
        return replace(job, review_state="approved")

    async def reject(
        self, guild_id: int, moderator_id: int, job_id: str, reason: str, *, source: str = "discord"
    ) -> Job:
        """The job ends `rejected` (its credits stay spent); returns it as stored. ReviewRefused when it cannot."""
        job = await self.waiting(guild_id, job_id)
        rejected = await self.jobs.reject(job_id, reason, self._audit(job, moderator_id, "reject", reason, source))
        if rejected is None:
            raise ReviewRefused("decided", job)
        return rejected
