"""Runs the real bot in-process against the fake Discord and the Kling simulator, with a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import HANDLER_TASKS, VideoBot
from bot.config import Settings, load_settings
from bot.provider.callbacks import CALLBACK_PATH
from bot.provider.simulator import KlingSimulator
from bot.resources import Resources, open_resources
from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.ports import free_port

KEY = "sk-harness-secret-key-0123"


class Harness:
    """The fake Discord, the simulator and a database; `running()` starts the bot (again, for restarts)."""

    def __init__(self, discord_fake: FakeDiscord, sim: KlingSimulator, database: Path) -> None:
        self.discord = discord_fake
        self.sim = sim
        self.database = database
        self.bot: VideoBot | None = None
        self.settings_overrides: dict[str, Any] = {}

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "discord_token": self.discord.token,
            "kling_api_key": KEY,
            "kling_endpoint_path": "harness",
            "kling_base_url": self.sim.base_url(),
            "database_path": self.database,
            "poll_interval_seconds": 0.05,
            "discord_api_base_url": self.discord.api_base,
            "discord_gateway_url": self.discord.gateway_url,
            "api_max_retries": 1,
        }
        return load_settings(env_file=None, **(values | self.settings_overrides))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[VideoBot]:
        """Start the bot, wait until it is ready, and stop it cleanly on exit."""
        settings = self.settings()
        self.discord.identified.clear()
        async with open_resources(settings) as resources:
            bot = VideoBot(settings, resources, guild_ready_timeout=0.05)
            self.bot = bot
            async with bot.http_servers():  # as `python -m bot run` does
                task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
                try:
                    await self.discord.wait_ready()
                    await asyncio.wait_for(bot.wait_until_ready(), 10)
                    yield bot
                finally:
                    await bot.close()
                    await task
                    self.bot = None

    @property
    def resources(self) -> Resources:
        assert self.bot is not None, "the bot is not running"
        return self.bot.resources

    def poller(self) -> Any:
        """The running bot's poll loop (its class comes from the loaded extension, so it is looked up by name)."""
        assert self.bot is not None, "the bot is not running"
        poller = self.bot.get_cog("Poller")
        assert poller is not None
        return poller

    async def more_ticks(self, count: int = 5) -> None:
        """Wait until the poll loop has run `count` more ticks: a window in which something due would happen."""
        poller = self.poller()
        target = poller.ticks + count
        await wait_until(lambda: poller.ticks >= target)

    async def hints_handled(self, count: int) -> None:
        """Wait until the poll loop has acted on `count` callbacks' hints in all."""
        poller = self.poller()
        await wait_until(lambda: poller.hints_handled >= count)

    async def handlers_done(self) -> None:
        """Wait until no command, button or form handler runs, nor an event one dispatched as it ended (the note
        after a command): what they send is then all sent."""
        await wait_until(
            lambda: not [t for t in asyncio.all_tasks() if t.get_name().startswith(HANDLER_TASKS) and not t.done()]
        )

    async def stop_deliverer_after_its_post(self, job: Any) -> None:
        """Leave `job` as a deliverer leaves it when it stops between the post and the row's update, its claim then
        running out: the video is posted, the job still `succeeded`, its lease expired and unreleased."""
        assert await self.resources.store.transition(
            job.id,
            "delivered",
            "succeeded",
            result_message_id=None,
            delivered_at=None,
            lease_owner="gone-host:1:dead",
            lease_until=time.time() - 1,
            lease_attempt=job.lease_attempt + 1,
            updated_at=time.time(),
        )

    async def job_in(self, *states: str) -> Any:
        """Wait until the single job in the database reaches one of the states; return it."""
        found: list[Any] = []

        async def reached() -> bool:
            jobs = await self.resources.store.jobs_in(states)
            found[:] = jobs
            return bool(jobs)

        await wait_until(reached)
        return found[0]


def callback_settings() -> dict[str, Any]:
    """Settings for a bot that takes the provider's callbacks on a free local port."""
    port = free_port()
    return {
        "callback_public_url": f"http://127.0.0.1:{port}{CALLBACK_PATH}",
        "callback_host": "127.0.0.1",
        "callback_port": port,
    }


async def private_answer(interaction: Interaction) -> str:
    """The interaction's latest private answer, once the loading ("thinking") message is gone."""
    await wait_until(lambda: interaction.messages and not interaction.messages[-1]["flags"] & 128)
    assert interaction.ephemeral(-1)
    return interaction.texts()[-1]


async def bot_process(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    """`python -m bot ARGS` as a real process, its output piped (the bot logs little in tests)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """Start the fake Discord and the simulator (each bot points discord.py at its Discord when it logs in)."""
    sim = KlingSimulator(api_key=KEY, endpoint_path="harness", render_seconds=0.2)
    async with running_fakes(FakeDiscord(), sim) as (fake, sim):
        yield Harness(fake, sim, tmp_path / "bot.sqlite3")


@contextlib.asynccontextmanager
async def running_fakes(fake: FakeDiscord, sim: KlingSimulator) -> AsyncIterator[tuple[FakeDiscord, KlingSimulator]]:
    """The fake Discord and the simulator, listening until the block ends."""
    await fake.start()
    await sim.start()
    try:
        yield fake, sim
    finally:
        await sim.close()
        await fake.close()
