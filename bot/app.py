"""The Discord front end: the `commands.Bot` subclass, its command tree, and how it is started."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import enum
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import discord
import prometheus_client
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.core.credits import PERSONAL
from bot.core.i18n import english, tr
from bot.core.model import AuditEntry, Job
from bot.ops.heap import tune_collector
from bot.provider.callbacks import CallbackServer, RateLimit
from bot.resources import Resources, open_resources
from bot.web.hosting import DashboardHooks, DashboardUnavailable, open_dashboard
from cogs.translator import CatalogTranslator

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.making", "cogs.buttons", "cogs.mine", "cogs.video", "cogs.poller", "cogs.quota_commands")


# Never "nothing was charged" here: the error may come after a job was accepted.
SOMETHING_WENT_WRONG = english(
    "Something went wrong on our side; it has been logged. `/video status` shows any video started."
)


STOPPING = english("The bot is restarting; try again in a minute. Nothing was charged.")
# With no personal quota set (PERSONAL_QUOTA_CREDITS=0), an interaction from outside a server is refused at the door.
NOT_IN_A_SERVER = english(
    "Videos are made only in a server here: this bot's owner has not turned on direct messages. Use this in a "
    "channel of a server. Nothing was charged."
)
# A user install used in a server the bot is not in, while no personal quota is set: refused at the door too.
NOT_IN_THIS_SERVER = english(
    "I am not in this server, and this bot's owner has not turned on personal credits, so I cannot make videos "
    "here. Use me in a server I am in. Nothing was charged."
)
# On shutdown, command and button handlers already running get this long to finish before the store closes.
HANDLER_GRACE_SECONDS = 10.0
# discord.py names the tasks that run command, button and form handlers; these are the ones a shutdown waits for.
HANDLER_TASKS = (
    "CommandTree-invoker",
    "discord-ui-view-dispatch",
    "discord-ui-modal-dispatch",
    "discord-ui-dynamic-item",
    # Events a handler dispatches as it ends (discord.py runs each listener in a task of this name): they still read
    # and write the store, so a shutdown waits for them too.
    "discord.py: on_app_command_completion",
    "discord.py: on_job_changed",
    "discord.py: on_video_approved",
    "discord.py: on_review_decided",
)


EXEMPT_FROM_GLOBAL_LIMIT = ("/interactions/", "/webhooks/")


class Lane(enum.IntEnum):
    """The lanes of the global pace, in the order they take a free turn (each first come first served)."""

    MEMBER = 0  # a request a member waits on: an answer's card, a Delete
    VIDEO = 1  # a finished video's post: what the flood's members wait for, before the edits that announce it
    BACKGROUND = 2  # the rest of the background work: cards and status edits, the poll loop's posts


# The lane of this context's Discord requests. The background work's tasks (the poll loop, the deliveries) set it
# to BACKGROUND, so they give way to the ones a member is waiting on, which would otherwise queue behind a flood's
# thousand posts; a delivery's post of the video itself goes in VIDEO, before the card edits still waiting.
LANE = contextvars.ContextVar("discord_lane", default=Lane.MEMBER)
# With every turn of the pace in flight, how often the next request looks whether an answer came back.
IN_FLIGHT_LOOK_SECONDS = 0.005


class Pace:
    """At most `limit` requests in any second as Discord counts them: a request waits for its turn instead of being
    refused.

    Discord counts a request when it arrives, somewhere between the moment it is let through here and the moment
    its answer comes back, and how long it takes to get there varies (an upload, a busy event loop). So a request
    holds its turn from the moment it is let through until a second after its answer (`done`): any second in which
    Discord counts requests then holds at most `limit` of them, however late each arrived.

    Three lanes (`Lane`), each first come first served: a free turn goes to a request of the first lane with one
    waiting."""

    def __init__(
        self,
        limit: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.sleep = sleep
        self.in_flight = 0  # let through, no answer yet
        self.answered: collections.deque[float] = collections.deque()  # when each answer of the last second came
        self.heads = [asyncio.Lock() for _ in Lane]  # held by the request at the head of each lane
        self.waiting = [0 for _ in Lane]  # requests waiting in each lane, its head included

    def held(self, now: float) -> int:
        """Turns Discord may still be counting in a second that contains `now`."""
        while self.answered and now - self.answered[0] >= 1.0:
            self.answered.popleft()
        return self.in_flight + len(self.answered)

    async def wait(self, lane: Lane = Lane.MEMBER) -> None:
        """Return when one more request keeps every second Discord could count within the limit; the caller then
        calls `done` once its answer came back (or the request failed)."""
        self.waiting[lane] += 1
        try:
            async with self.heads[lane]:
                while True:
                    now = self.clock()
                    full = self.held(now) >= self.limit
                    if not full and not any(self.waiting[:lane]):
                        self.in_flight += 1
                        return
                    # A turn frees a second after the oldest answer; with every turn in flight, when one comes back.
                    # Not full: a free turn that a request of an earlier lane is about to take; look again once it has.
                    if full:
                        await self.sleep(1.0 - (now - self.answered[0]) if self.answered else IN_FLIGHT_LOOK_SECONDS)
                    else:
                        await self.sleep(0.001)
        finally:
            self.waiting[lane] -= 1

    def done(self) -> None:
        """The answer to a request let through by `wait` came back (or it failed): its turn ends a second from now."""
        self.in_flight -= 1
        self.answered.append(self.clock())


def paced_trace(api_base: str, pace: Pace) -> aiohttp.TraceConfig:
    """An aiohttp trace (discord.py's `http_trace` option) that holds every request to Discord's API, retries
    included, until the global pace allows it, and ends its turn when the answer (or the failure) comes back;
    interaction answers are exempt, as they are at Discord."""
    api_base = api_base.rstrip("/")

    async def on_request_start(
        session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        url = str(params.url)
        if url.startswith(api_base) and not url[len(api_base) :].startswith(EXEMPT_FROM_GLOBAL_LIMIT):
            await pace.wait(LANE.get())
            context.paced = True  # aiohttp gives each request its own context, and an end or an exception after this

    async def on_request_finished(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
        if getattr(context, "paced", False):
            context.paced = False
            pace.done()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_end.append(on_request_finished)
    trace.on_request_exception.append(on_request_finished)
    return trace


class UserFacingError(app_commands.AppCommandError):
    """An expected problem whose message is shown to the member as is."""


class VideoTree(app_commands.CommandTree["VideoBot"]):
    """Expected errors become ephemeral messages; the rest are logged with the interaction's context."""

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if self.client.closing:
            await reply_ephemeral(interaction, tr(interaction.locale, STOPPING))
            return False
        if (refusal := refused_here(interaction)) is not None:
            await reply_ephemeral(interaction, tr(interaction.locale, refusal))
            return False
        return True

    async def on_error(self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError) -> None:
        if isinstance(error, UserFacingError):
            text = str(error)
        elif isinstance(error, app_commands.CheckFailure):
            text = tr(interaction.locale, "You are not allowed to use this command here.")
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error(
                "command %s failed (guild %s, channel %s, user %s)",
                command,
                interaction.guild_id,
                interaction.channel_id,
                interaction.user.id,
                exc_info=error,
            )
            text = tr(interaction.locale, SOMETHING_WENT_WRONG)
        await reply_ephemeral(interaction, text)


# Where the commands are offered: servers and the bot's own DM (refused there while no personal quota is set).
IN_SERVERS_AND_DMS = app_commands.AppCommandContext(guild=True, dm_channel=True)
# The member's own commands (/video, /quota) as a user app too: installed to a member, they work in any server,
# the bot's DM and the member's other DMs and group DMs (context 2), wherever the bot itself is not.
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
GUILD_AND_USER_INSTALLS = app_commands.AppInstallationType(guild=True, user=True)


def outside_the_bot(interaction: discord.Interaction[Any]) -> bool:
    """Whether the interaction comes where only the member's user install reaches: a server the bot is not in (no
    guild install authorized it, or the bot's cache lacks the server) or a DM between members. There the bot cannot
    post: its jobs are private (answers by follow-up, the video by DM) and spend the personal quota."""
    if interaction.context.private_channel:
        return True
    if interaction.guild_id is None:
        return False
    return not interaction.is_guild_integration() or interaction.client.get_guild(interaction.guild_id) is None


def refused_here(interaction: discord.Interaction[Any]) -> str | None:
    """Why the bot does not take this interaction where it comes from (an English msgid), or None: outside a server
    it is in, only when the owner set a personal quota (else it is refused before anything is reserved)."""
    if interaction.client.settings.personal_quota_credits > 0:
        return None
    if interaction.guild_id is None:
        return NOT_IN_A_SERVER
    return NOT_IN_THIS_SERVER if outside_the_bot(interaction) else None


def allowed_here(interaction: discord.Interaction[Any]) -> bool:
    """Whether the bot takes this interaction where it comes from (see `refused_here`)."""
    return refused_here(interaction) is None


def quota_scope(interaction: discord.Interaction[Any]) -> int:
    """Whose credits an interaction spends and whose jobs it sees: its server's, else (the bot's DM, a user install
    outside the bot's servers) the member's personal quota."""
    return PERSONAL if interaction.guild_id is None or outside_the_bot(interaction) else interaction.guild_id


async def reply_ephemeral(interaction: discord.Interaction[Any], text: str, **kwargs: Any) -> None:
    """Answer privately, whether or not the interaction was already answered; never pings."""
    kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, **kwargs)
        else:
            await interaction.response.send_message(text, ephemeral=True, **kwargs)
    except discord.HTTPException:
        log.warning("could not answer interaction %s", interaction.id, exc_info=True)


class VideoBot(commands.AutoShardedBot):
    """The bot; resources are built outside and injected, so tests and the command line share them.

    It runs the shards SHARD_IDS of SHARD_COUNT (each process of a fleet its own), or, with neither set, every shard
    Discord recommends for the bot (GET /gateway/bot: one below 2,500 servers), all in this process."""

    def __init__(self, settings: Settings, resources: Resources, **options: Any) -> None:
        shard_ids, shard_count = settings.shard_plan()
        options.setdefault("shard_ids", shard_ids)
        options.setdefault("shard_count", shard_count)
        options.setdefault("intents", discord.Intents.default())
        self.pace = Pace(settings.discord_pace())
        options.setdefault("http_trace", paced_trace(settings.discord_api_base_url, self.pace))
        super().__init__(
            command_prefix=commands.when_mentioned,
            tree_cls=VideoTree,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            **options,
        )
        self.settings = settings
        self.resources = resources
        self.closing = False
        # The poll loop registers itself here when its cog loads: a callback's hint goes to it (it only notes it; the
        # loop tells the fleet the ones that match a job). Its flag says whether the fleet told it.
        self.hint_handler: Callable[[str, bool], Coroutine[Any, Any, None]] | None = None
        self.fleet_alerts: list[str] = []  # alerts other processes raised, for the one that posts them
        self.metrics_address: tuple[str, int] | None = None  # where the metrics page listens, once it does
        self.web_address: tuple[str, int] | None = None  # where the dashboard listens, once it does

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CatalogTranslator())  # commands' names and descriptions in zh-CN too
        for extension in EXTENSIONS:
            await self.load_extension(extension)

    async def login(self, token: str) -> None:
        apply_discord_endpoints(self.settings)
        await super().login(token)

    @contextlib.asynccontextmanager
    async def http_servers(self) -> AsyncIterator[None]:
        """The callback endpoint and the metrics page, when configured, and the fleet's hint channel: open while the
        bot runs (never for `sync`, which runs beside a bot that holds their ports)."""
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            if settings.metrics_port:
                # Its own thread; it never touches the event loop.
                server, thread = prometheus_client.start_http_server(settings.metrics_port, settings.metrics_host)
                stack.callback(thread.join, 5)
                stack.callback(server.shutdown)
                self.metrics_address = (str(server.server_address[0]), int(server.server_address[1]))
                log.info("metrics on %s port %d", settings.metrics_host, settings.metrics_port)
            if settings.callback_public_url:
                secret = settings.callback_secret.get_secret_value() if settings.callback_secret else None
                rate = settings.callback_rate_per_second
                limit = RateLimit(rate, settings.callback_rate_burst) if rate > 0 else None
                callbacks = CallbackServer(self.task_hint, secret=secret, rate_limit=limit)
                port = await callbacks.start(settings.callback_host, settings.callback_port)
                stack.push_async_callback(callbacks.close)
                log.info("taking callbacks on port %d for %s", port, settings.callback_public_url)
            if settings.web_port is not None:
                try:
                    self.web_address = await stack.enter_async_context(
                        open_dashboard(settings, self.resources, self.dashboard_hooks())
                    )
                except DashboardUnavailable as exc:  # the bot runs on without it
                    log.error("the dashboard is off: %s", exc)
            # What another process of the fleet tells (a callback it took, an alert, an approval) comes here.
            await self.resources.fleet.listen(self._from_fleet)
            yield

    def dashboard_hooks(self) -> DashboardHooks:
        """What a change made in the dashboard does in Discord, as the same change made by a command does."""

        async def decided(job: Job, moderator_id: int) -> None:
            self.dispatch("review_decided", job, moderator_id)  # the review cog shows it as after its buttons

        async def changed(entry: AuditEntry) -> None:
            from cogs.quota_commands import describe_audit  # the log line as the slash command writes it

            await self.post_log(entry.guild_id, f"🛡️ {describe_audit(entry, self.server_locale(entry.guild_id))}")

        return DashboardHooks(decided, changed)

    async def task_hint(self, task_id: str) -> None:
        """A callback named a task: the poller notes it at once (the provider's request never waits for a query),
        asks about it soon, and tells the fleet if it matches a job (another process may be the one polling it)."""
        if self.hint_handler is not None:
            await self.hint_handler(task_id, False)

    async def _from_fleet(self, kind: str, text: str) -> None:
        if kind == "hint" and self.hint_handler is not None:
            await self.hint_handler(text, True)
        elif kind == "decided":  # in a dashboard served alone (python -m bot web): "<job id> <moderator id>"
            job_id, moderator_id = text.split()
            job = await self.resources.store.get_job(job_id)
            if job is not None and await self.resources.fleet.holds("alerts"):
                self.dispatch("review_decided", job, int(moderator_id))  # shown once, by the alerts' holder
            else:
                self.dispatch("video_approved", job_id)  # every process wakes its deliveries: one claims the post
        elif kind == "alert":
            self.fleet_alerts.append(text)  # posted by this process's poll loop if it holds the alerts duty

    async def close(self) -> None:
        """Stop taking interactions, let the handlers in flight finish (bounded), then stop the rest."""
        if not self.closing:
            self.closing = True
            await self._handlers_done(time.monotonic() + HANDLER_GRACE_SECONDS)
        await super().close()

    async def _handlers_done(self, deadline: float) -> None:
        """Wait, until `deadline`, for the handlers running now and for the events they dispatch as they end."""
        while running := [t for t in asyncio.all_tasks() if t.get_name().startswith(HANDLER_TASKS) and not t.done()]:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d command handler(s) still running after %.0fs", len(running), HANDLER_GRACE_SECONDS)
                return
            log.info("waiting for %d command handler(s) to finish", len(running))
            await asyncio.wait(running, timeout=left)

    def server_locale(self, guild_id: int | None) -> discord.Locale | None:
        """The server's preferred language (its log channel's announcements are in it); None when unknown."""
        guild = self.get_guild(guild_id) if guild_id else None
        return guild.preferred_locale if guild else None

    async def post_log(self, guild_id: int | None, text: str) -> None:
        """Post to the server's log channel, if its moderators set one; a failure is only logged. The text is in
        the server's language (`server_locale`)."""
        if guild_id is None:
            return
        settings = await self.resources.credits.settings(guild_id)
        if settings.log_channel_id is not None:
            await self.post_to(guild_id, settings.log_channel_id, text)

    async def post_to(self, guild_id: int, channel_id: int, text: str) -> None:
        """Post `text` in a channel of a server, pinging nobody; a failure is only logged."""
        try:
            await self.get_partial_messageable(channel_id, guild_id=guild_id).send(
                text, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            log.warning("could not post to the log channel of server %s: %s", guild_id, exc)

    async def on_ready(self) -> None:
        assert self.user is not None
        shards = ",".join(str(shard) for shard in sorted(self.shards))
        log.info(
            "logged in as %s (%s) in %d servers, shards %s of %s",
            self.user, self.user.id, len(self.guilds), shards, self.shard_count,
        )  # fmt: skip


def apply_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at Discord or at a compatible server, at each login.

    discord.py has no setting for this: every REST URL is `Route.BASE + path` and a bot connects to
    `DiscordWebSocket.DEFAULT_GATEWAY`, both class attributes. This is the only place that sets them; each bot sets
    them from its own settings when it logs in, so nothing has to undo them."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def _require_token(settings: Settings) -> str:
    token = settings.discord_token.get_secret_value()
    if not token:
        raise SystemExit("error: DISCORD_TOKEN is not set; the bot cannot log in to Discord")
    return token


async def run_bot(settings: Settings) -> int:
    """Run until stopped; SIGTERM and SIGINT close the gateway, the session and the database cleanly."""
    token = _require_token(settings)
    async with (
        open_resources(settings, single_instance=True) as resources,
        VideoBot(settings, resources) as bot,
        bot.http_servers(),
    ):
        tune_collector()  # start-up is done: its objects are never walked again
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, functools.partial(_stop, bot, signum))
        try:
            await bot.start(token)
        except discord.LoginFailure:
            log.error("Discord refused the token (DISCORD_TOKEN)")
            return 1
    log.info("stopped cleanly")
    return 0


def _stop(bot: VideoBot, signum: int) -> None:
    log.info("received %s; stopping", signal.Signals(signum).name)
    asyncio.get_running_loop().create_task(bot.close())


async def sync_commands(settings: Settings) -> int:
    """Register the slash commands with Discord: instantly in DISCORD_GUILD_ID, or globally (up to an hour)."""
    token = _require_token(settings)
    async with open_resources(settings) as resources, VideoBot(settings, resources) as bot:
        await bot.login(token)  # runs setup_hook, which loads the cogs and so the commands
        if settings.discord_guild_id:
            guild = discord.Object(settings.discord_guild_id)
            bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            where = f"server {settings.discord_guild_id}"
        else:
            synced = await bot.tree.sync()
            where = "every server (global commands can take up to an hour to appear)"
    print(f"ok: {len(synced)} commands registered in {where}: {', '.join(c.name for c in synced)}")
    return 0
