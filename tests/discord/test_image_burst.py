"""Members' images through the real bot and the fake Discord: downloads a few at once, the card's small preview,
and the full checked image still the job's first frame."""

from __future__ import annotations

import asyncio
import base64
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.media.images import PREVIEW_SIDE
from bot.provider.simulator import GatewayVariant
from tests.fake_discord import wait_until
from tests.harness import Harness, harness

BURST = 20
DOWNLOADS = 3


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides |= {
            "image_downloads": DOWNLOADS,
            "default_quota_credits": 1000,
            "member_jobs_in_flight": 100,
            "server_jobs_in_flight": 1000,
            "provider_concurrency": 100,
        }
        yield running


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A noisy picture (so it is big as a real photo is, not a flat colour)."""
    noise = random.Random(width * height).randbytes(width * height * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), noise).save(out, fmt, quality=95)
    return out.getvalue()


def submits(world: Harness) -> list[Any]:
    return [r for r in world.sim.requests if r.method == "POST"]


def card_file(world: Harness) -> tuple[str, bytes]:
    [card] = world.discord.messages[world.discord.general]
    [file] = card["files"]
    return file


async def test_twenty_images_at_once_are_downloaded_at_most_image_downloads_at_a_time(world: Harness) -> None:
    fake = world.discord
    fake.cdn_gate = asyncio.Event()
    image = photo(640, 480)
    async with world.running():
        commands = [
            await fake.slash("video", {"image": fake.add_attachment(f"f{n}.jpg", image, "image/jpeg")}, sub="image")
            for n in range(BURST)
        ]
        await wait_until(lambda: fake.cdn_in_flight >= DOWNLOADS and all(c.deferred for c in commands))
        await world.more_ticks(3)  # a window in which unbounded downloads would all have reached the CDN
        waiting = fake.cdn_in_flight
        fake.cdn_gate.set()
        await wait_until(lambda: len(submits(world)) == BURST, within=30)
    assert waiting == DOWNLOADS and fake.cdn_peak == DOWNLOADS


@pytest.mark.parametrize("variant", ["any", "url_only"])
async def test_the_card_shows_a_small_preview_when_the_members_image_is_the_frame(world: Harness, variant: Any) -> None:
    fake = world.discord
    world.sim.variant = GatewayVariant(first_frame=variant)
    image = photo(1600, 1200)
    async with world.running():
        attachment = fake.add_attachment("photo.jpg", image, "image/jpeg")
        await fake.slash("video", {"image": attachment, "prompt": "waves"}, sub="image")
        await world.job_in("delivered")
    name, preview = card_file(world)
    assert name == "first-frame.jpg" and len(preview) < 60_000 < len(image)
    assert max(Image.open(io.BytesIO(preview)).size) == PREVIEW_SIDE
    post = submits(world)[-1]  # a URL-only gateway first refuses the Base64 try
    sent = post.json["contents"][0]["url"]
    # The job's first frame is still the member's whole image: as Base64, or the member's own attachment.
    assert sent == (base64.b64encode(image).decode() if variant == "any" else attachment["url"])


async def test_the_card_carries_the_full_frame_when_its_copy_is_the_frames_url(world: Harness) -> None:
    fake = world.discord
    world.sim.variant = GatewayVariant(first_frame="url_only")
    image = photo(1200, 900, "WEBP")  # converted to JPEG: only the card's copy has a URL
    async with world.running():
        await fake.slash("video", {"image": fake.add_attachment("photo.webp", image, "image/webp")}, sub="image")
        job = await world.job_in("delivered")
        stored = await world.resources.store.get_image(job.image_sha256)
    name, copy = card_file(world)
    [card] = fake.messages[fake.general]
    assert stored is not None and name == "first-frame.jpg" and copy == stored.data
    assert Image.open(io.BytesIO(copy)).size == (1200, 900)
    post = submits(world)[-1]  # a URL-only gateway first refuses the Base64 try
    assert post.json["contents"][0]["url"] == card["attachments"][0]["url"] == job.frame_url
