"""The background loop: ticks the job service, keeps status messages current, hands finished jobs to delivery."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable

import discord
from discord.ext import commands, tasks

from bot.app import LANE, Lane, VideoBot
from bot.core.i18n import english, tr, translated
from bot.core.model import AT_PROVIDER, FINAL, STATES, Job
from bot.serving import metrics
from cogs.delivery import Deliverer, DeliveryWorker
from cogs.messages import job_card, status_line

log = logging.getLogger(__name__)

# Status edits for elapsed times and queue places: each message at most every 30 s, at most 20 per tick, so a hundred
# jobs in flight cost well under one request per second against Discord's 50 per second.
STATUS_EDITS_PER_TICK = 20
HINT_COALESCE_SECONDS = 0.03  # callbacks arriving this close together are answered by one query
# Callbacks' hints waiting for their lookup, at most; beyond it a flood's hints are dropped (and counted). A dropped
# hint may have been a real job's: while hints are dropped, every job at the provider is asked about instead, at
# most every OVERFLOW_ASK_SECONDS, so a real job still lands within seconds.
MAX_PENDING_HINTS = 2000
OVERFLOW_ASK_SECONDS = 1.0
# A hinted job someone held (an intake that has not yet let go of the job it just sent, another process's tick) is
# asked about again this much later, at most HELD_HINT_TRIES times; past that its holder asks, or the ordinary poll.
HELD_HINT_RETRY_SECONDS = 0.25
HELD_HINT_TRIES = 40
STOP_GRACE_SECONDS = 8.0  # on shutdown: for a tick in progress, then for running deliveries
METRICS_EVERY = 30.0
ENDINGS = {  # how a job ended, in the log channel's announcement
    "delivered": english("delivered"),
    "failed": english("failed"),
    "cancelled": english("cancelled"),
    "undeliverable": english("undeliverable"),
}


class StatusMessages:
    """Keeps each job's status message and card current with as few Discord requests as possible: a state
    change edits them once; times are Discord timestamps that count by themselves, so nothing is edited to
    advance them; a delivered video is its own news (only the card is edited, to link it)."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.shown_position: dict[str, int] = {}
        self.shown_late: set[str] = set()
        # One card edit at a time per channel: its cards share one Discord bucket, and discord.py lets a crowd of
        # waiting requests overrun a bucket as it resets (a few 429s per hundred edits) when they all wait at once.
        self.channel_turns: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    async def show_queue(self) -> None:
        """Keep each queued job's place in line current (only the places that changed are edited)."""
        order = await self.bot.resources.jobs.queue_order()
        edits = 0
        for place, job in enumerate(order, start=1):
            if self.shown_position.get(job.id) != place and edits < STATUS_EDITS_PER_TICK:
                await self.show(job, card=False, position=place)
                self.shown_position[job.id] = place
                edits += 1
        queued = {job.id for job in order}
        for job_id in [j for j in self.shown_position if j not in queued]:
            del self.shown_position[job_id]

    async def show_late(self, jobs: list[Job]) -> None:
        """Say once that a job is late (its timestamp keeps counting on its own)."""
        jobs_service = self.bot.resources.jobs
        late = [job for job in jobs if jobs_service.is_late(job)]
        for job in [j for j in late if j.id not in self.shown_late][:STATUS_EDITS_PER_TICK]:
            await self.show(job, card=False)
            self.shown_late.add(job.id)
        self.shown_late &= {job.id for job in late}

    async def show(self, job: Job, *, card: bool, position: int | None = None) -> None:
        """Bring the status message (and, on a change of state, the card) up to date; errors are only logged."""
        if job.channel_id is None:
            return
        card_is_status = job.message_id is not None and job.message_id == job.status_message_id
        # Once delivered, the video's own message below the status says so: only the card changes.
        if job.status_message_id is not None and (job.status != "delivered" or card_is_status):
            estimate = await self.bot.resources.jobs.estimate_seconds(job.duration, job.resolution)
            channel = self.bot.get_partial_messageable(job.thread_id or job.channel_id, guild_id=job.guild_id)
            late = self.bot.resources.jobs.is_late(job)
            try:
                await channel.get_partial_message(job.status_message_id).edit(
                    content=status_line(job, time.time(), estimate, position, late=late),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
            except discord.HTTPException as exc:
                log.info("job %s: status edit failed: %s", job.id, exc)
        # The card separately: a deleted thread (status message gone) must not keep the card from saying where the
        # video went, and a deleted card is only logged.
        if card and job.message_id and not card_is_status:
            parent = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            try:
                async with self.channel_turns[job.channel_id]:
                    await parent.get_partial_message(job.message_id).edit(
                        embed=job_card(job), allowed_mentions=discord.AllowedMentions.none()
                    )
            except discord.HTTPException as exc:
                log.info("job %s: card edit failed: %s", job.id, exc)


class Poller(commands.Cog):
    """Runs `JobService.poll_once()` every POLL_INTERVAL_SECONDS; one bad tick never ends the loop."""

    def __init__(self, bot: VideoBot) -> None:
        self.bot = bot
        self.jobs = bot.resources.jobs
        self.deliverer = Deliverer(bot)
        self.deliveries = DeliveryWorker(self.deliverer, self.delivery_done)
        self.stop_grace = STOP_GRACE_SECONDS
        self.status = StatusMessages(bot)
        self.busy = False
        self.ticks = 0  # ticks completed, for operators' debugging and for tests that count ticks
        self.hints_handled = 0  # callbacks' hints acted on, likewise
        # Task ids named by callbacks, waiting for the next batched lookup, each with whether a callback to this
        # process named it (then, if it matches a job, the fleet is told; a hint the fleet told is not told again).
        self.hinted: dict[str, bool] = {}
        self.max_pending_hints = MAX_PENDING_HINTS
        self.hints_dropped = False  # since the last lookup; then every job at the provider is asked about
        self.asked_all_at = float("-inf")
        self.hint_flush: asyncio.Task[None] | None = None
        self.held_tries: dict[str, int] = {}  # task ids whose job was held when hinted, with the tries so far
        self.held_waiting: set[str] = set()  # of those, the ones to hint again when `held_timer` fires
        self.held_timer: asyncio.TimerHandle | None = None
        self.lock = asyncio.Lock()  # a callback's hint and a tick never apply the same provider answer at once
        self.metrics_at = float("-inf")
        self.metrics_every = METRICS_EVERY
        self.tick.change_interval(seconds=bot.settings.poll_interval_seconds)

    async def cog_load(self) -> None:
        self.bot.hint_handler = self.hint
        self.tick.start()

    async def cog_unload(self) -> None:
        # Let a tick in progress finish (a sleeping loop is simply cancelled), then the running deliveries.
        self.deliveries.closed = True  # nothing new starts while stopping
        task = self.tick.get_task()
        if self.busy and task is not None:
            self.tick.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
            except TimeoutError:
                log.warning("the poll tick did not finish in %.0fs; cancelling it", self.stop_grace)
        self.tick.cancel()
        if self.held_timer is not None:
            self.held_timer.cancel()
        if self.hint_flush is not None:  # hints not yet asked about: the next poll covers them
            self.hint_flush.cancel()
            await asyncio.gather(self.hint_flush, return_exceptions=True)
        await self.deliveries.stop(self.stop_grace)

    @tasks.loop(seconds=10)
    async def tick(self) -> None:
        LANE.set(Lane.BACKGROUND)  # this loop's task (and the tasks it starts) never makes a member wait
        self.busy = True
        try:
            with metrics.POLL_TICK_SECONDS.time():
                await self.run_once()
            await self.update_metrics()
            delay = await self.jobs.suggested_delay(self.bot.settings.poll_interval_seconds)
            if delay != self.tick.seconds:
                self.tick.change_interval(seconds=delay)
        except Exception:
            log.exception("poll tick failed; the loop goes on")
        finally:
            self.busy = False
            self.ticks += 1

    async def update_metrics(self) -> None:
        """The gauges: the queue every tick; states and credits (whole-table counts) at most every 30 s."""
        metrics.QUEUE.set(await self.jobs.count_in_state("queued"))
        if time.monotonic() - self.metrics_at < self.metrics_every:
            return
        self.metrics_at = time.monotonic()
        counts = await self.jobs.count_by_status()
        for state in STATES:
            metrics.JOBS.labels(state).set(counts.get(state, 0))
        credits = self.bot.resources.credits
        for guild in self.bot.guilds:
            metrics.CREDITS_USED.labels(str(guild.id)).set(await credits.credits_used(guild.id) / 1000)

    @tick.before_loop
    async def before_tick(self) -> None:
        await self.bot.wait_until_ready()
        try:
            for change in await self.jobs.resume():
                await self.announce(change.job)
        except Exception:
            log.exception("resuming jobs after the restart failed; the poll loop will settle them")

    async def run_once(self) -> None:
        """One tick: poll, announce what moved, start delivering what finished, refresh queue places and times.

        Deliveries run in the background: the tick never waits for a download or an upload."""
        fleet = self.bot.resources.fleet  # some duties are done by one process of the fleet at a time
        async with self.lock:
            for change in await self.jobs.poll_once(sweep=await fleet.holds("sweep")):
                await self.announce(change.job)
            alerts = self.jobs.take_alerts()
            # Alerts other processes told: the holder posts them; the others drop them (the holder was told too).
            told, self.bot.fleet_alerts = self.bot.fleet_alerts, []
            if await fleet.holds("alerts"):
                await self.post_alerts(list(dict.fromkeys(alerts + told)))  # the same trouble seen by several: once
            else:
                for alert in alerts:
                    await fleet.tell("alert", alert)
        await self.deliver_finished()
        if await fleet.holds("status"):
            await self.status.show_queue()
            await self.status.show_late(await self.jobs.in_state(*AT_PROVIDER))

    async def post_alerts(self, alerts: list[str]) -> None:
        """Account trouble, to every server's log channel: those of other shards too (they are in the database)."""
        if not alerts:
            return
        for guild_id, channel_id in (await self.bot.resources.credits.log_channels()).items():
            locale = self.bot.server_locale(guild_id)
            for alert in alerts:
                await self.bot.post_to(guild_id, channel_id, f"⚠️ {translated(locale, alert)}")

    async def hint(self, task_id: str, from_fleet: bool = False) -> None:
        """A callback said a task changed: ask about it soon, together with the others that arrive meanwhile
        (callbacks come in bursts when many videos finish at once: one query answers them all). Nothing is awaited
        here, so the callback's answer never waits for the database."""
        self._note_hint(task_id, from_fleet)

    def _note_hint(self, task_id: str, from_fleet: bool) -> None:
        if task_id not in self.hinted and len(self.hinted) >= self.max_pending_hints:
            metrics.CALLBACKS_DROPPED.inc()
            self.hints_dropped = True
        else:
            self.hinted[task_id] = self.hinted.get(task_id, False) or not from_fleet
        if self.hint_flush is None or self.hint_flush.done():
            self.hint_flush = asyncio.get_running_loop().create_task(self._flush_hints())

    async def _flush_hints(self) -> None:
        while self.hinted or self.hints_dropped:  # hints that came during a lookup get the next one
            await asyncio.sleep(HINT_COALESCE_SECONDS)  # let the rest of the burst arrive
            hinted, self.hinted = self.hinted, {}
            try:
                await self._act_on_hints(hinted)
            except Exception:
                log.exception("handling the callbacks for %d task(s) failed; polling will catch up", len(hinted))
            finally:
                self.hints_handled += len(hinted)

    async def _act_on_hints(self, hinted: dict[str, bool]) -> None:
        """Look the hinted tasks up in one query, outside the tick's lock (a flood of made-up ids matches nothing and
        never holds up a tick); tell the fleet the ones that match a job; ask the provider about those."""
        jobs = await self.jobs.hinted_jobs(list(hinted))
        for job in jobs:
            if job.provider_task_id is not None and hinted.get(job.provider_task_id):
                await self.bot.resources.fleet.tell("hint", job.provider_task_id)
        if self.hints_dropped and time.monotonic() - self.asked_all_at >= OVERFLOW_ASK_SECONDS:
            self.hints_dropped, self.asked_all_at = False, time.monotonic()
            jobs = await self.jobs.in_state(*AT_PROVIDER)  # a dropped hint may have been any of them
        if not jobs:
            return
        async with self.lock:
            changes, held = await self.jobs.refresh(jobs)
            for change in changes:
                await self.announce(change.job)
        self._hint_held_again(held, asked=hinted)
        await self.deliver_finished()

    def _hint_held_again(self, held: list[Job], asked: Iterable[str]) -> None:
        """Hint the held jobs again shortly, a bounded number of times: a hint dropped here would leave a finished
        video waiting for the job's ordinary poll, which for a long render may be minutes away."""
        again = {job.provider_task_id for job in held if job.provider_task_id is not None}
        for task_id in set(asked) - again:  # asked about, or no longer at the provider: done with
            self.held_tries.pop(task_id, None)
        for task_id in again:
            self.held_tries[task_id] = self.held_tries.get(task_id, 0) + 1
            if self.held_tries[task_id] > HELD_HINT_TRIES:
                del self.held_tries[task_id]
                log.info("callback: task %s stayed held by another claim; its poll will see it", task_id)
            else:
                self.held_waiting.add(task_id)
        if self.held_waiting and self.held_timer is None:
            self.held_timer = asyncio.get_running_loop().call_later(HELD_HINT_RETRY_SECONDS, self._retry_held)

    def _retry_held(self) -> None:
        self.held_timer = None
        waiting, self.held_waiting = self.held_waiting, set()
        for task_id in waiting:
            self._note_hint(task_id, from_fleet=True)  # matched a job already: the fleet was told then

    async def deliver_finished(self) -> int:
        """Claim finished jobs for the free delivery slots and hand them to the delivery worker; no waiting.

        Only as many as can start now are claimed: the rest stay free for another process of the fleet."""
        started = 0
        for job, resumed in await self.jobs.claim_deliveries(self.deliveries.room()):
            if self.deliveries.schedule(job, resumed=resumed):
                started += 1
            # Else it is being delivered here still (its earlier claim ran out meanwhile). The new claim is kept until
            # it runs out: released now, it would no longer say that a post may already exist.
        return started

    async def delivery_done(self, job_id: str) -> None:
        """After a try at delivering: show the job's new state (delivered, undeliverable, failed), if it moved, and
        take the next finished job into the freed slot at once (a failed try waits for a tick, as retries do)."""
        current = await self.jobs.get(job_id)
        if current is not None and current.status != "succeeded":
            await self.deliver_finished()  # first: the announcement waits for the channel's edits
            await self.announce(current)

    @commands.Cog.listener()
    async def on_video_approved(self, job_id: str) -> None:
        """A moderator approved a video waiting for review: deliver it now."""
        await self.deliver_finished()

    @commands.Cog.listener()
    async def on_job_changed(self, job: Job) -> None:
        """A command moved a job (a cancel): show it like a move the poll found."""
        await self.announce(job)

    async def announce(self, job: Job) -> None:
        """Show a change of state; a failure is also posted so the member is notified."""
        if self.deliverer.card_pending(job):
            return  # the command announces it once the card and the thread exist
        if job.status == "succeeded":
            return  # its delivery follows at once, and shows the end state (or undeliverable, or failed)
        await self.status.show(job, card=True)
        if job.status == "failed":
            await self.deliverer.tell_failure(job)
        if job.status in FINAL:
            where = f"<#{job.thread_id or job.channel_id}>"
            locale = self.bot.server_locale(job.guild_id)
            text = tr(
                locale,
                "⏹️ video `{id}` of {mention} {ending} in {where}",
                id=job.id[:8],
                mention=f"<@{job.user_id}>",
                ending=tr(locale, ENDINGS.get(job.status, job.status)),
                where=where,
            )
            await self.bot.post_log(job.guild_id, text)


async def setup(bot: VideoBot) -> None:
    await bot.add_cog(Poller(bot))
