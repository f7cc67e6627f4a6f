"""The Prometheus endpoint of a running bot."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.fake_discord import wait_until
from tests.harness import harness
from tests.ports import free_port


def value(text: str, series: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


async def test_metrics_report_jobs_api_calls_ticks_queue_and_credits(tmp_path: Path) -> None:
    port = free_port()
    async with harness(tmp_path) as world:
        world.settings_overrides = {"metrics_port": port}
        fake = world.discord
        async with world.running() as bot, aiohttp.ClientSession() as session:
            bot.get_cog("Poller").metrics_every = 0.0  # type: ignore[union-attr]  # refresh every tick here
            await fake.slash("video", {"prompt": "measured"}, sub="text")
            await world.job_in("delivered")
            refused = await fake.slash("video", {"prompt": "forbidden thing"}, sub="text", user="bob")
            await wait_until(lambda: refused.texts() and "content policy" in refused.texts()[0])

            async def scraped() -> str:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    return await response.text()

            async def settled() -> bool:
                text = await scraped()
                return 'kling_bot_jobs{state="delivered"} 1.0' in text and 'kling_bot_jobs{state="failed"} 1.0' in text

            await wait_until(settled)
            text = await scraped()
    assert value(text, 'kling_bot_jobs{state="failed"}') == 1.0
    assert value(text, 'kling_bot_api_errors_total{code="1301"}') >= 1
    assert value(text, 'kling_bot_api_seconds_count{call="text-to-video"}') >= 2
    assert value(text, "kling_bot_poll_tick_seconds_count") >= 1
    assert value(text, "kling_bot_queue_length") == 0.0
    assert value(text, f'kling_bot_credits_used{{guild="{fake.guild_id}"}}') == 4.0


async def test_the_metrics_page_listens_on_127_0_0_1_only_by_default(tmp_path: Path) -> None:
    port = free_port()
    async with harness(tmp_path) as world:
        world.settings_overrides = {"metrics_port": port}
        async with world.running() as bot, aiohttp.ClientSession() as session:
            assert bot.metrics_address == ("127.0.0.1", port)  # the listening socket's own address
            async with session.get(f"http://127.0.0.1:{port}/metrics") as local:
                assert local.status == 200
            # Any other address of the machine is refused (on Linux, 127.0.0.2 reaches a socket bound to 0.0.0.0).
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://127.0.0.2:{port}/metrics")


async def test_metrics_host_exposes_the_page_on_purpose(tmp_path: Path) -> None:
    port = free_port()
    async with harness(tmp_path) as world:
        world.settings_overrides = {"metrics_port": port, "metrics_host": "0.0.0.0"}
        async with world.running() as bot, aiohttp.ClientSession() as session:
            assert bot.metrics_address == ("0.0.0.0", port)
            async with session.get(f"http://127.0.0.2:{port}/metrics") as answer:
                assert answer.status == 200
