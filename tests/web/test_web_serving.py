"""How the dashboard is served: its cookie, its login's state, the bot without it, and `python -m bot web` alone
beside a PostgreSQL fleet (an approval made there is posted by the fleet's bot)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import Harness, bot_process, harness, private_answer
from tests.ops.test_discord_process import bot_env
from tests.ports import free_port

pytest_plugins = ["tests.postgres"]

SECRET = "a-session-secret-for-tests-0123456789"


def web_settings(fake: FakeDiscord, port: int, public: str | None = None) -> dict[str, Any]:
    return {
        "web_port": port,
        "web_public_url": public or f"http://127.0.0.1:{port}",
        "discord_client_secret": fake.client_secret,
        "web_session_secret": SECRET,
    }


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 as a browser does (aiohttp keeps none for bare IPs by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def log_in(client: aiohttp.ClientSession, base: str) -> str:
    """Through /login, Discord's consent page and /callback; returns the list of servers' page."""
    async with client.get(base + "/login") as response:
        assert response.status == 200 and response.url.path == "/"
        return await response.text()


@pytest.mark.parametrize(("public", "secure"), [("http://127.0.0.1:{port}", False), ("https://videos.example", True)])
async def test_the_session_cookie_is_http_only_same_site_lax_and_secure_behind_https(
    world: Harness, public: str, secure: bool
) -> None:
    port = free_port()
    world.settings_overrides |= web_settings(world.discord, port, public.format(port=port))
    login = f"http://127.0.0.1:{port}/login"
    async with world.running(), aiohttp.ClientSession() as client, client.get(login, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith(world.discord.api_base.removesuffix("/api/v10"))
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


async def test_a_login_answer_with_another_browsers_state_is_refused(world: Harness) -> None:
    port = free_port()
    world.settings_overrides |= web_settings(world.discord, port)
    base = f"http://127.0.0.1:{port}"
    async with world.running(), browser_session() as victim, browser_session() as attacker:
        # The attacker starts a login and sends the victim Discord's answer meant for the attacker's browser.
        async with attacker.get(base + "/login", allow_redirects=False) as started:
            consent = started.headers["Location"]
        async with attacker.get(consent, allow_redirects=False) as answered:
            callback = answered.headers["Location"]
        await victim.get(base + "/login", allow_redirects=False)  # the victim's own session waits for its state
        async with victim.get(callback) as response:
            assert response.status == 403
        async with victim.get(base + "/") as page:
            assert "Log in with Discord" in await page.text()  # not logged in as anyone


async def test_the_bot_runs_without_the_dashboard_when_its_settings_or_packages_are_missing(
    world: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    world.settings_overrides |= web_settings(world.discord, port) | {"web_session_secret": None}
    async with world.running() as bot:
        assert bot.web_address is None
        assert "Limit:" in await private_answer(await world.discord.slash("quota", {}))
    assert "the dashboard needs WEB_SESSION_SECRET" in caplog.text
    world.settings_overrides |= {"web_session_secret": SECRET}
    monkeypatch.setitem(sys.modules, "jinja2", None)  # as if the `web` extra were not installed
    monkeypatch.delitem(sys.modules, "bot.web.dashboard", raising=False)
    async with world.running() as bot:
        assert bot.web_address is None
        assert "Limit:" in await private_answer(await world.discord.slash("quota", {}))
    assert "the dashboard needs the web extra" in caplog.text


async def test_python_m_bot_web_on_sqlite_says_the_bot_serves_it(world: Harness, tmp_path: Path) -> None:
    env = bot_env(world.discord, world.sim, tmp_path, WEB_PORT=str(free_port()))
    process = await bot_process("web", env=env, cwd=tmp_path)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "needs DATABASE_URL (PostgreSQL): on SQLite the bot itself serves the dashboard" in err.decode()


async def test_the_dashboard_alone_approves_and_the_fleets_bot_posts_the_video(
    world: Harness, tmp_path: Path, postgres_dsn: str
) -> None:
    fake = world.discord
    review = fake.add_channel("video-review", 0)
    world.settings_overrides |= {"database_url": postgres_dsn}
    port = free_port()
    env = bot_env(
        fake, world.sim, tmp_path, DATABASE_URL=postgres_dsn, WEB_PORT=str(port),
        WEB_PUBLIC_URL=f"http://127.0.0.1:{port}", DISCORD_CLIENT_SECRET=fake.client_secret, WEB_SESSION_SECRET=SECRET,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with world.running():
        await fake.slash("quota-admin", {"channel": review}, sub="review", user="mod", types={"channel": 7})
        await fake.slash("video", {"prompt": "a kite"}, sub="text")
        job = await world.job_in("succeeded")
        await wait_until(lambda: fake.messages[review])
        process = await bot_process("web", env=env, cwd=tmp_path)
        try:
            async with browser_session() as client:
                await wait_until(lambda: _answers(client, base), within=30)
                await log_in(client, base)
                async with client.get(f"{base}/servers/{fake.guild_id}") as page:
                    html = await page.text()
                csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
                assert csrf is not None and job.id in html
                form = {"csrf": csrf.group(1), "job": job.id}
                async with client.post(f"{base}/servers/{fake.guild_id}/approve", data=form) as approved:
                    assert approved.status == 200 and "Approved" in await approved.text()
            delivered = await world.job_in("delivered")  # posted by the bot, told by the dashboard's process
            assert delivered.id == job.id
            # The bot holding the alerts duty shows the decision: the review message loses its buttons.
            await wait_until(lambda: "Approved by" in fake.messages[review][0]["content"])
            assert not fake.messages[review][0].get("components")
            [decision, _] = await world.resources.credits.audit_entries(int(fake.guild_id))
            assert (decision.action, decision.source) == ("approve", "web")
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()[-2000:]


async def _answers(client: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with client.get(base + "/") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False
