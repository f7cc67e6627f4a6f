"""The bot end to end through the fake Discord (REST, gateway, CDN) and the Kling simulator."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.simulator import sample_video
from tests.conftest import make_image
from tests.harness import Harness, harness


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def submits(world: Harness) -> list:
    return [r for r in world.sim.requests if r.method == "POST"]


async def test_video_text_ends_with_the_exact_mp4_in_its_thread(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        interaction = await fake.slash("video", {"prompt": "a red fox in snow", "duration": 5}, sub="text")
        job = await world.job_in("delivered")
    assert interaction.deferred and interaction.ephemeral(0)
    assert "on its way" in interaction.texts()[0]
    [thread] = fake.threads()
    assert thread["name"] == "a red fox in snow"
    card = fake.messages[fake.general][0]
    assert thread["id"] == card["id"] == str(job.message_id)
    assert card["embeds"][0]["description"] == "a red fox in snow"
    status, video = fake.messages[thread["id"]]
    assert status["content"].startswith("✅ **Done**")
    assert video["files"] == [(f"video-{job.id[:8]}.mp4", sample_video())]
    assert video["content"] == f"<@{fake.users['alice']['id']}> your video is ready."
    assert video["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])]}
    assert [c["custom_id"] for c in video["components"][0]["components"]] == [
        f"video:reroll:{job.id}",
        f"video:delete:{job.id}",
    ]
    [post] = submits(world)
    assert post.json["prompt"] == "a red fox in snow" and post.json["options"]["external_task_id"] == job.id
    assert fake.unexpected == []


async def test_video_image_sends_the_attachment_as_base64(world: Harness) -> None:
    fake = world.discord
    png = make_image(640, 480)
    async with world.running():
        image = fake.add_attachment("frame.png", png, "image/png", 640, 480)
        await fake.slash("video", {"image": image, "prompt": "waves roll in"}, sub="image")
        await world.job_in("delivered")
    [post] = submits(world)
    assert post.json["contents"][0] == {"type": "first_frame", "url": base64.b64encode(png).decode()}
    assert post.json["contents"][1] == {"type": "prompt", "text": "waves roll in"}
    assert "aspect_ratio" not in post.json["settings"]
