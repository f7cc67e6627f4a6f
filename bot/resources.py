"""The long-lived resources every front end needs, opened together and closed together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from bot.config import Settings
from bot.core.credits import CreditService
from bot.core.jobs import JobService
from bot.core.review import Review
from bot.media.downloads import ImageFetcher
from bot.provider.kling import KlingClient
from bot.storage.fleet import Fleet, open_fleet
from bot.storage.interface import Storage, open_storage


@dataclass(frozen=True, slots=True)
class Resources:
    """One HTTP session, one database connection, and the service built on them."""

    session: aiohttp.ClientSession
    store: Storage
    kling: KlingClient
    jobs: JobService
    credits: CreditService
    fleet: Fleet  # the other processes on the same database (none on SQLite)
    images: ImageFetcher  # members' attachments, a few at once
    review: Review  # the moderators' decisions on videos waiting for review


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, *, single_instance: bool = False, origin: str = "discord"
) -> AsyncIterator[Resources]:
    """Open the session and the store, build the client and the service; close everything on exit.

    `single_instance` is for the bot itself: a second bot on the same SQLite file is refused (PostgreSQL, which
    several processes share, is not locked so). `origin` names whose
    jobs the service runs: the bot's ('discord') or the command line's ('cli'), never the other's."""
    async with aiohttp.ClientSession(headers={"User-Agent": "kling-video-bot/0.1"}) as session:
        store = await open_storage(settings.database, single_instance=single_instance)
        try:
            kling = KlingClient(
                session,
                root_url=settings.kling_api_root,
                api_key=settings.kling_api_key,
                timeout=settings.api_timeout_seconds,
                max_retries=settings.api_max_retries,
                query_concurrency=settings.poll_concurrency,
                model=settings.kling_model,
            )
            credits = CreditService(
                store, settings.quota_defaults, rates=settings.credit_rates, personal=settings.personal_quota
            )
            jobs = JobService(
                store,
                kling,
                job_timeout=settings.job_timeout_minutes * 60,
                rates=settings.credit_rates,
                credits=credits,
                callback_url=settings.callback_public_url,
                provider_concurrency=settings.provider_concurrency,
                origin=origin,
                lookup_window=settings.submit_lookup_seconds,
                lease_seconds=settings.lease_seconds,
                poll_interval=settings.poll_interval_seconds,
            )
            fleet = open_fleet(settings.database)
            try:
                images = ImageFetcher(session, limit=settings.image_downloads)
                yield Resources(session, store, kling, jobs, credits, fleet, images, Review(jobs))
            finally:
                await fleet.close()
        finally:
            await store.close()
