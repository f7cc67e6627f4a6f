"""The fake Discord's opt-in rate limits: Discord's headers and 429s, obeyed by a plain discord.py client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from tests.fake_discord import FakeDiscord, running_bot, running_fake
from tests.fakes.discord.ratelimits import Limit, rate_limit_route

MESSAGES = "POST /channels/{channel_id}/messages"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(rate_limits=True) as started:
        yield started


async def post(session: aiohttp.ClientSession, fake: FakeDiscord, path: str, method: str = "POST") -> Any:
    headers = {"Authorization": f"Bot {fake.token}"}
    async with session.request(method, fake.api_base + path, json={"content": "hi"}, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


def test_routes_keep_major_parameters_only() -> None:
    assert rate_limit_route("PATCH", "/channels/1/messages/2") == ("PATCH /channels/{channel_id}/messages/{id}", "1")
    assert rate_limit_route("POST", "/webhooks/3/tok") == ("POST /webhooks/{webhook_id}/{token}", "3/tok")
    assert rate_limit_route("GET", "/webhooks/3/tok/messages/@original")[0].endswith("/messages/{id}")
    assert rate_limit_route("PUT", "/applications/4/guilds/5/commands") == (
        "PUT /applications/{id}/guilds/{guild_id}/commands",
        "5",
    )


async def test_a_route_bucket_counts_down_then_answers_429(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        answers = [await post(session, fake, f"/channels/{fake.general}/messages") for _ in range(6)]
        other = await post(session, fake, f"/channels/{fake.log_channel}/messages")
        fake.reset_rate_limits()
        again = await post(session, fake, f"/channels/{fake.general}/messages")
    assert [status for status, _, _ in answers] == [200] * 5 + [429]
    assert [h["X-RateLimit-Remaining"] for _, h, _ in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert {h["X-RateLimit-Limit"] for _, h, _ in answers} == {"5"}
    assert len({h["X-RateLimit-Bucket"] for _, h, _ in answers}) == 1
    assert 4.5 < float(answers[0][1]["X-RateLimit-Reset-After"]) <= 5.0
    _, headers, body = answers[5]
    assert body["message"] == "You are being rate limited." and body["global"] is False
    assert 4.5 < body["retry_after"] <= 5.0 and float(headers["Retry-After"]) == pytest.approx(body["retry_after"])
    assert headers["X-RateLimit-Scope"] == "user"
    assert other[0] == 200  # another channel: its own bucket
    assert again[0] == 200 and again[1]["X-RateLimit-Remaining"] == "4"  # a new window
    assert fake.rate_limited == [(MESSAGES, False)]
    assert len(fake.messages[fake.general]) == 6 and fake.requests[-3].status == 429


async def test_a_burst_over_50_per_second_is_limited_globally_but_not_interactions(fake: FakeDiscord) -> None:
    fake.route_limits[MESSAGES] = Limit(1000, 1.0)  # only the global limit matters here
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(post(session, fake, f"/channels/{fake.general}/messages") for _ in range(60)))
        webhook = await post(session, fake, "/webhooks/1/unknown-token")
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 50 and statuses.count(429) == 10
    refused = [(headers, body) for status, headers, body in answers if status == 429]
    assert all(body["global"] and 0 < body["retry_after"] <= 1.0 for _, body in refused)
    assert all(h["X-RateLimit-Scope"] == "global" and h["X-RateLimit-Global"] == "true" for h, _ in refused)
    assert webhook[0] == 404  # interaction webhooks are not bound by the global limit: answered, not 429
    assert fake.rate_limited == [(MESSAGES, True)] * 10


async def test_off_by_default_no_headers_nothing_refused() -> None:
    async with running_fake() as fake, aiohttp.ClientSession() as session:
        answers = [await post(session, fake, f"/channels/{fake.general}/messages") for _ in range(20)]
    assert {status for status, _, _ in answers} == {200}
    assert not any("X-RateLimit-Limit" in headers for _, headers, _ in answers)
    assert fake.rate_limited == []


def plain_client() -> discord.Client:
    return discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)


async def test_discord_py_obeys_the_headers_in_a_steady_stream(fake: FakeDiscord) -> None:
    fake.route_limits[MESSAGES] = Limit(5, 0.5)  # Discord's shape, a tenth of its window, to keep the test short
    async with running_bot(plain_client(), fake) as client:
        channel = client.get_partial_messageable(int(fake.general))
        await asyncio.gather(*(channel.send(f"message {n}") for n in range(20)))
    assert len(fake.messages[fake.general]) == 20
    assert fake.rate_limited == []  # discord.py waited for each window the headers announced
    posts = [r.at for r in fake.posted(pattern="/messages$")]
    assert posts[-1] - posts[0] >= 3 * 0.5  # four windows of five


async def test_discord_py_waits_out_a_global_429_and_delivers_everything(fake: FakeDiscord) -> None:
    channels = [fake.add_channel(f"room-{n}", 0) for n in range(60)]
    async with running_bot(plain_client(), fake) as client:
        await asyncio.gather(*(client.get_partial_messageable(int(c)).send("hi") for c in channels))
    assert all(len(fake.messages[c]) == 1 for c in channels)
    assert fake.rate_limited and all(is_global for _, is_global in fake.rate_limited)
