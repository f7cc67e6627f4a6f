"""Serving the dashboard: inside the bot when WEB_PORT is set, or alone with `python -m bot web` (PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from bot.config import ConfigError, Settings
from bot.core.model import AuditEntry, Job
from bot.resources import Resources, open_resources
from bot.serving.server import serve

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DashboardHooks:
    """What the dashboard tells the bot: a review decided (the job as stored after it, and the moderator: Discord
    then shows it as after the review buttons) and a moderator's change (its log line). Served apart from the bot,
    the first goes to the fleet and the second is only in the audit log."""

    decided: Callable[[Job, int], Awaitable[None]]
    changed: Callable[[AuditEntry], Awaitable[None]]


class DashboardUnavailable(Exception):
    """The dashboard cannot start: its settings or its packages (the `web` extra) are missing."""


async def application_id(resources: Resources, settings: Settings) -> int:
    """DISCORD_CLIENT_ID, or the bot application's own id (the OAuth2 client is the bot's application)."""
    if settings.discord_client_id is not None:
        return settings.discord_client_id
    token = settings.discord_token.get_secret_value()
    url = settings.discord_api_base_url.rstrip("/") + "/oauth2/applications/@me"
    async with resources.session.get(url, headers={"Authorization": f"Bot {token}"}) as response:
        if response.status != 200:
            raise DashboardUnavailable(f"could not read the application's id from Discord (HTTP {response.status})")
        return int((await response.json())["id"])


@contextlib.asynccontextmanager
async def open_dashboard(
    settings: Settings, resources: Resources, hooks: DashboardHooks
) -> AsyncIterator[tuple[str, int]]:
    """Serve the dashboard on WEB_HOST:WEB_PORT until the block ends; yields (host, port). Raises
    DashboardUnavailable (its message names what is missing) when it cannot start."""
    if missing := settings.web_missing():
        raise DashboardUnavailable("the dashboard needs " + ", ".join(missing))
    try:
        from bot.web.dashboard import Dashboard
        from bot.web.discord_api import DiscordApi
    except ImportError as exc:  # Jinja2 comes with the `web` extra
        raise DashboardUnavailable(f"the dashboard needs the web extra (pip install -e '.[web]'): {exc}") from None
    assert settings.web_port is not None and settings.web_public_url is not None
    assert settings.discord_client_secret is not None and settings.web_session_secret is not None
    api = DiscordApi(
        resources.session,
        settings.discord_api_base_url,
        settings.discord_token.get_secret_value(),
        await application_id(resources, settings),
        settings.discord_client_secret.get_secret_value(),
    )
    dashboard = Dashboard(
        store=resources.store,
        credits=resources.credits,
        jobs=resources.jobs,
        review=resources.review,
        api=api,
        public_url=settings.web_public_url,
        session_secret=settings.web_session_secret.get_secret_value(),
        hooks=hooks,
    )
    runner, port = await serve(dashboard.app(), settings.web_host, settings.web_port)
    log.info("dashboard on %s port %d for %s", settings.web_host, port, settings.web_public_url)
    try:
        yield settings.web_host, port
    finally:
        await runner.cleanup()


async def serve_alone(settings: Settings) -> int:
    """`python -m bot web`: the dashboard without a gateway connection, beside the bots of a PostgreSQL fleet (an
    approved or rejected video is told to the fleet, whose bots show the decision in Discord)."""
    if not settings.database_url or settings.database_url.startswith("sqlite"):
        raise ConfigError(
            "python -m bot web needs DATABASE_URL (PostgreSQL): on SQLite the bot itself serves the dashboard "
            "(set WEB_PORT)"
        )
    if settings.web_port is None:
        raise ConfigError("WEB_PORT is not set: the dashboard has no port to listen on")
    async with open_resources(settings) as resources:

        async def decided(job: Job, moderator_id: int) -> None:
            await resources.fleet.tell("decided", f"{job.id} {moderator_id}")

        async def changed(entry: AuditEntry) -> None:
            return None  # in the audit log; the log channel's line needs the bot

        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        try:
            async with open_dashboard(settings, resources, DashboardHooks(decided, changed)):
                await stopped.wait()
        except DashboardUnavailable as exc:
            raise ConfigError(str(exc)) from None
    return 0
