"""The Prometheus endpoint of a running bot."""

from __future__ import annotations

from pathlib import Path

import aiohttp

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
