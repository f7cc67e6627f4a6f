"""The reads the front ends need: a job, a member's jobs, counts, a video's chain, a first frame, and how a
member wants to be told."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bot.core.job_base import InvalidRequest, JobBase
from bot.core.model import NOTIFY_MODES, Job
from bot.media.images import FirstFrame

MAX_CHAIN = 50  # segments read back from one video (a join of more would not fit an upload anyway)


class JobReads(JobBase):
    """The front ends' reads (and a member's notify preference)."""

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
        self,
        guild_id: int,
        user_id: int | None,
        *,
        statuses: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Job]:
        """A member's jobs in one server (every member's with None: the dashboard's list), newest first."""
        return await self.store.member_jobs(guild_id, user_id, statuses=statuses, limit=limit, offset=offset)

    async def untold_unreached(self, guild_id: int, user_id: int) -> list[Job]:
        """The member's private videos that reached no one and were not yet told to them; each is marked told
        (once: a second caller finds it told)."""
        untold = []
        for job in await self.member_jobs(guild_id, user_id, statuses=("undeliverable",), limit=25):
            unreached = job.delivered_via == "none" and not job.undelivered_told
            now = time.time()
            if unreached and await self.store.update_job(
                job.id, "undeliverable", undelivered_told=True, updated_at=now
            ):
                untold.append(job)
        return untold

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

    async def stored_frame(self, sha256: str) -> FirstFrame | None:
        """A job's stored first or end frame by its digest (for a re-roll or an edit), or None when it is gone."""
        stored = await self.store.get_image(sha256)
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

    async def notify_preference(self, user_id: int) -> str:
        """'mention' (the default), 'dm' or 'off'."""
        return await self.store.notify_preference(user_id)

    async def set_notify_preference(self, user_id: int, mode: str) -> None:
        """Keep how a member wants to be told their videos are done."""
        if mode not in NOTIFY_MODES:
            raise InvalidRequest(f"Choose one of {', '.join(NOTIFY_MODES)}, not {mode!r}.")
        await self.store.set_notify_preference(user_id, mode)
