"""Intake and reservation: a request checked, costed and written with its credits held (a second job for the same
request key is refused), then started (sent, or queued); a reserved job released, a waiting one cancelled."""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from bot.core import quota
from bot.core.i18n import english
from bot.core.job_base import InvalidRequest, JobBase, JobRequest, ServiceUnavailable
from bot.core.model import FINAL, OPEN, WAITING, Job
from bot.core.options import option, takes_frame
from bot.crashpoints import crash_point
from bot.media.images import FirstFrame, frame_base64, frame_bytes, send_slots

log = logging.getLogger(__name__)

MAX_PROMPT = {"text": 3072, "image": 2500}
DURATIONS = option("duration").allowed
RESOLUTIONS = option("resolution").allowed
ASPECT_RATIOS = option("aspect_ratio").allowed


class Intake(JobBase):
    """Take a request: validate, cost, reserve (one job per request key), start, release, cancel."""

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
        _ = request.options  # raises InvalidRequest at the first option its declaration refuses
        if request.kind == "text":
            if request.image is not None or request.image_url is not None or request.end_image is not None:
                raise InvalidRequest(english("A text video takes no image; use an image video for a first frame."))
        else:
            if (request.image is None) == (request.image_url is None):
                raise InvalidRequest(english("An image video needs exactly one first-frame image."))
            if request.image_url is not None and not request.image_url.startswith(("https://", "http://")):
                raise InvalidRequest(english("The first frame must be an http(s) link or an uploaded image."))

    @property
    def takes_sound(self) -> bool:
        """Whether the video service takes a sound choice (False once it refused one)."""
        return self.kling.takes_sound

    def cost_of(self, duration: int, resolution: str, sound: str | None = None) -> int:
        """The credits (milli) a job of this shape reserves (for the buttons' prices; a job's own: `JobOptions`)."""
        with_sound = self.takes_sound and sound != "off"
        return quota.job_cost(duration, resolution, self.rates, with_sound=with_sound)

    async def with_server_defaults(self, request: JobRequest) -> JobRequest:
        """The request with its server's defaults for what the member left unchosen (the sound)."""
        if request.sound is not None or self.credits is None or request.guild_id is None:
            return request
        default = (await self.credits.settings(request.guild_id)).sound_default
        return replace(request, sound=default) if default is not None else request

    async def private_allowed(self, guild_id: int | None) -> bool:
        """Whether the server's moderators let members make private videos (allowed by default)."""
        if self.credits is None or guild_id is None:
            return True
        return (await self.credits.settings(guild_id)).private_policy != "deny"

    async def request_cost(self, request: JobRequest) -> int:
        """What this request would reserve now (its server's defaults applied), for the confirm question."""
        request = await self.with_server_defaults(request)
        return request.options.cost(self.rates, sound_offered=self.kling.takes_sound)

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
        request = await self.with_server_defaults(request)
        self.validate(request)
        if request.end_image is not None and not takes_frame(self.kling.model, "end_image"):
            raise InvalidRequest(english("This video model takes no end frame; leave the end image out."))
        options = request.options
        # A service known to take no sound control: the choice is kept, the job sent without it and charged silent.
        sound_dropped = options["sound"] is not None and not self.kling.takes_sound
        charged = self.credits is not None and self.origin == "discord"
        if charged and (request.guild_id is None or request.user_id is None):
            # Credits are counted per member of a server: a Discord job outside one would be sent with no quota.
            raise InvalidRequest(english("Videos can only be made in a server."))
        if request.private and not await self.private_allowed(request.guild_id):
            raise InvalidRequest(english("This server's moderators do not allow private videos."))
        unavailable = self.unavailable_reason()
        if unavailable is not None and not request.wait_if_unavailable:
            raise ServiceUnavailable(unavailable)
        now = self.clock()
        image_sha = await self._store_frame(request.image) if request.image is not None else None
        end_sha = await self._store_frame(request.end_image) if request.end_image is not None else None
        job = Job(
            id=secrets.token_hex(8),
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            user_id=request.user_id,
            kind=request.kind,
            prompt=request.prompt,
            **options.columns(),
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
            cost_estimate=options.cost(self.rates, sound_offered=self.kling.takes_sound),
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
            edited_from=request.edited_from,
            end_image_sha256=end_sha,
            locale=request.locale,
            # Held by this process while its command posts the card and sends it: no one else sends it meanwhile.
            lease_owner=self.owner,
            lease_until=now + self.reserved_grace,
            lease_attempt=1,
            request_key=request.request_key,
            sound_dropped=sound_dropped,
            private=request.private,
            followup_token=request.followup_token if request.private else None,
            followup_until=request.followup_until if request.private else None,
        )
        if self.credits is not None and job.guild_id is not None and job.user_id is not None:
            await self.credits.reserve(job, request.role_ids)
        else:  # the command line's jobs, and services without quotas
            await self.store.add_job(job)
        log.info("job %s reserved (%s, %ss, %s)", job.id, job.kind, job.duration, job.resolution)
        crash_point("after_reserve")
        return job

    async def _store_frame(self, image: FirstFrame) -> str:
        # Its own function, so the bytes are let go on return, not held for the rest of the reservation.
        async with frame_bytes(image) as data:
            return await self.store.put_image(data, image.mime, image.width, image.height)

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

    async def release(self, job: Job, reason: str) -> Job | None:
        """Give up a reserved job that was never sent (its card could not be posted): its credits are freed."""
        if job.attempts:
            return None
        now = self.clock()
        if not await self.store.transition(job.id, "reserved", "cancelled", error=reason, finished_at=now,
                                           updated_at=now):  # fmt: skip
            return None
        return await self.store.get_job(job.id)

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
