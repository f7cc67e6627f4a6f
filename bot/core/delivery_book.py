"""Delivery bookkeeping: the finished jobs a deliverer claims, its renewals, the outcome it records (delivered,
undeliverable, a problem, a dead download), and the moderator review that holds a video first."""

from __future__ import annotations

from bot.core.i18n import english
from bot.core.job_base import JobBase, released
from bot.core.model import AuditEntry, Job, Lease


class DeliveryBook(JobBase):
    """What the deliverers and the review record: claims, renewals, outcomes, review decisions."""

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

    async def mark_delivered(
        self, job_id: str, *, result_message_id: int | None = None, lease: Lease | None = None, via: str | None = None
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
            delivered_via=via,
            delivered_at=now,
            updated_at=now,
            **released(now),
        )

    async def mark_undeliverable(self, job_id: str, reason: str, *, lease: Lease | None = None) -> bool:
        """Every way to post the video failed; the link stays in the job's row for the member's history."""
        now = self.clock()
        return await self.store.transition(
            job_id, "succeeded", "undeliverable", lease=lease, error=reason, updated_at=now, **released(now)
        )

    async def mark_unreached(self, job_id: str, *, lease: Lease | None = None) -> bool:
        """A private video that reached no one (a closed DM, the command's token expired): `undeliverable` with
        `delivered_via` 'none' and its link kept; its member is told at their next command."""
        now = self.clock()
        return await self.store.transition(
            job_id,
            "succeeded",
            "undeliverable",
            lease=lease,
            error=english("Your direct messages are closed, so the video could not be sent to you."),
            delivered_via="none",
            updated_at=now,
            **released(now),
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

    async def hold_for_review(self, job: Job) -> Job:
        """A finished video waits for a moderator: review_state becomes 'pending' (once) before anything is
        posted, so no path delivers it to the member meanwhile. Returns the job as stored."""
        await self.store.decide_review(job.id, None, "succeeded", review_state="pending", updated_at=self.clock())
        return await self.store.get_job(job.id) or job

    async def set_review_message(self, job_id: str, message_id: int) -> None:
        """Remember the review channel's message that carries the job's Approve and Reject buttons."""
        await self.store.update_job(job_id, "succeeded", review_message_id=message_id, updated_at=self.clock())

    async def approve(self, job_id: str, audit: AuditEntry | None = None) -> bool:
        """A moderator approved the video: it is delivered like any other (with all its tries: refused posts to the
        review channel do not count against them). False when already decided. `audit`: written with it."""
        return await self.store.decide_review(job_id, "pending", "succeeded", audit=audit, review_state="approved",
                                              delivery_attempts=0, updated_at=self.clock())  # fmt: skip

    async def reject(self, job_id: str, reason: str, audit: AuditEntry | None = None) -> Job | None:
        """A moderator rejected the video: the job ends `rejected`. Its credits stay spent (the provider billed
        the render), so it counts as used like a delivered job. None when already decided."""
        now = self.clock()
        if not await self.store.decide_review(
            job_id, "pending", "rejected", audit=audit, review_state="rejected", review_reason=reason, updated_at=now
        ):
            return None
        return await self.store.get_job(job_id)
