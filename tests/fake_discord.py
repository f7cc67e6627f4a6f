"""A protocol-level fake of Discord: REST, the gateway websocket and the attachment CDN, on 127.0.0.1.

It runs all of discord.py's real code and enforces what real Discord
enforces and the bot depends on: permissions, upload limits, no threads in forums or threads, deleted channels,
message nonces, the first followup after a defer replacing the loading message. With `rate_limits=True` (or the
attribute set later) it also enforces Discord's rate limits: a global limit, per-route buckets, the X-RateLimit-*
headers and 429s (counted in `rate_limited`); every recorded request carries its arrival time and status.

    async with running_fake() as fake, running_bot(bot, fake):
        interaction = await fake.send_slash("ping", [], subcommand="pong")
        await interaction.wait_response()

`FakeDiscord` is assembled here from its parts in tests/fakes/discord/, one per thing it fakes: the world it holds
(world.py: guilds, members, roles, permissions, channels, messages), the gateway (gateway.py), interactions and the
routes that answer them (interactions.py), the other REST routes and the CDN (rest.py), rate limits
(ratelimits.py), the OAuth2 login of a web page (oauth.py); wire.py holds what they share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, TypeVar

import discord
import yarl

from bot.serving.server import serve
from tests.fakes.discord.gateway import Gateway
from tests.fakes.discord.interactions import Interaction, Interactions
from tests.fakes.discord.oauth import OAuth
from tests.fakes.discord.rest import Rest, Route

__all__ = ["FakeDiscord", "Interaction", "running_bot", "running_fake", "wait_until"]


class FakeDiscord(Rest, Interactions):
    """One guild with members, roles and channels (more with `add_guild`); a bot logs in with `token`. Each part
    says what it fakes; with `shards`, the gateway shards as Discord does (see Gateway)."""

    _routes: ClassVar[list[Route]] = [*Rest.ROUTES, *Interactions.ROUTES, *Gateway.ROUTES, *OAuth.ROUTES]

    def __init__(
        self, *, filesize_limit: int | None = None, premium_tier: int = 0, rate_limits: bool = False, shards: int = 1
    ) -> None:
        super().__init__(
            filesize_limit=filesize_limit, premium_tier=premium_tier, rate_limits=rate_limits, shards=shards
        )

    async def start(self) -> None:
        self._runner, self.port = await serve(self.app, "127.0.0.1", 0)

    async def close(self) -> None:
        for task in list(self._tasks):
            await task
        for socket in list(self._connections):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()


# --- running things against the fake ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_fake(**options: Any) -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord; closed afterwards, and discord.py's endpoints restored."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    fake = FakeDiscord(**options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.asynccontextmanager
async def running_bot(
    bot: ClientT,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    timeout: float = 10,  # noqa: ASYNC109
) -> AsyncIterator[ClientT]:
    """Point discord.py at the fake, start `bot` and wait until it is ready; close it (and its session) on exit.

    Pass `guild_ready_timeout=0.05` to the bot, or readiness waits two seconds for guilds."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    fake.identified.clear()
    task = asyncio.create_task(bot.start(token or fake.token))
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # login failed: raise why
            raise RuntimeError("the bot stopped before it was ready")
        if not ready.done():
            raise TimeoutError(f"the bot was not ready within {timeout}s")
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


async def wait_until(predicate: Any, within: float = 15.0, interval: float = 0.01) -> None:
    """Poll a condition (a callable, sync or async) until it holds; fail the test if it never does."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
