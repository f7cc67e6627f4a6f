"""The end frame through the bot: `/video image` offers `end_image` only where KLING_MODEL takes a last frame
(kling-3.0), the image reaches the provider as `last_frame` in Base64, and a gateway that refuses or ignores it
leaves the member with a clear answer and no charge (refused) or their video (ignored)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.provider.sim_variant import GatewayVariant
from cogs.translator import CatalogTranslator
from tests.conftest import make_image
from tests.fake_discord import wait_until
from tests.harness import Harness, harness, private_answer


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


def with_model(world: Harness, model: str) -> None:
    world.settings_overrides |= {"kling_model": model}
    world.sim.model = model


def image_options(payload: dict[str, Any]) -> dict[str, Any]:
    [image] = [o for o in payload["options"] if o["name"] == "image"]
    return {o["name"]: o for o in image["options"]}


async def video_payload(world: Harness) -> dict[str, Any]:
    bot = world.bot
    command = bot.tree.get_command("video")
    assert command is not None
    return await command.get_translated_payload(bot.tree, CatalogTranslator())


async def test_turbo_registers_image_without_end_image(world: Harness) -> None:
    async with world.running():
        options = image_options(await video_payload(world))
    assert "image" in options and "prompt" in options
    assert "end_image" not in options


async def test_kling_3_registers_end_image_optional_and_translated(world: Harness) -> None:
    with_model(world, "kling-3.0")
    async with world.running():
        options = image_options(await video_payload(world))
    end = options["end_image"]
    assert end["type"] == 11 and not end.get("required")  # an attachment, optional
    assert end["name_localizations"]["zh-CN"] and end["description_localizations"]["zh-CN"]
    assert options["image"]["required"] and "private" in options  # the same command, one option more


def frame_size(base64_text: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(base64_text, validate=True))).size


async def image_job(world: Harness, **extra: Any) -> str:
    fake = world.discord
    first = fake.add_attachment("first.png", make_image(640, 480), "image/png", 640, 480)
    end = fake.add_attachment("end.png", make_image(600, 400), "image/png", 600, 400)
    interaction = await fake.slash("video", {"image": first, "end_image": end, **extra}, sub="image")
    return await private_answer(interaction)


async def test_kling_3_sends_the_end_image_as_last_frame(world: Harness) -> None:
    with_model(world, "kling-3.0")
    async with world.running():
        answer = await image_job(world, prompt="the sun sets")
        job = await world.job_in("delivered")
        stored = await world.resources.store.get_image(job.end_image_sha256)
    assert "on its way" in answer
    [post] = [r for r in world.sim.requests if r.method == "POST"]
    assert post.path.endswith("/image-to-video/kling-3.0")
    contents = {item["type"]: item for item in post.json["contents"]}
    assert frame_size(contents["first_frame"]["url"]) == (640, 480)
    assert frame_size(contents["last_frame"]["url"]) == (600, 400)  # raw Base64 of the end image
    assert stored is not None and base64.b64decode(contents["last_frame"]["url"]) == stored.data


async def test_a_refused_last_frame_charges_nothing_and_says_why(world: Harness) -> None:
    with_model(world, "kling-3.0")
    world.sim.variant = GatewayVariant(last_frame="refuse")
    async with world.running():
        answer = await image_job(world)
        job = await world.job_in("failed")
        used = await world.resources.credits.credits_used(int(world.discord.guild_id))
    assert "last_frame is not supported" in answer and "Nothing was charged." in answer
    assert used == 0 and not world.sim.tasks and job.error


async def test_an_ignored_last_frame_still_delivers_the_video(world: Harness) -> None:
    with_model(world, "kling-3.0")
    world.sim.variant = GatewayVariant(last_frame="ignore")
    async with world.running():
        await image_job(world)
        job = await world.job_in("delivered")
    assert job.end_image_sha256 and len(world.sim.tasks) == 1
    [thread] = world.discord.threads()
    await wait_until(lambda: any(m["files"] for m in world.discord.messages[thread["id"]]))


async def test_a_re_roll_keeps_the_end_frame(world: Harness) -> None:
    with_model(world, "kling-3.0")
    fake = world.discord
    async with world.running():
        await image_job(world, prompt="a door closes")
        first = await world.job_in("delivered")
        [thread] = fake.threads()
        video = next(m for m in fake.messages[thread["id"]] if m["files"])
        reroll = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: reroll.texts() and "on its way" in reroll.texts()[-1])
        await wait_until(lambda: len(world.sim.tasks) == 2)
    bodies = [r.json for r in world.sim.requests if r.method == "POST"]
    last_frames = [[c["url"] for c in body["contents"] if c["type"] == "last_frame"] for body in bodies]
    assert len(last_frames) == 2 and last_frames[0] == last_frames[1] and len(last_frames[0]) == 1


async def test_turbo_refuses_an_end_image_from_a_stale_command(world: Harness) -> None:
    # The command as synced when KLING_MODEL was kling-3.0: Discord may still send end_image to a turbo bot.
    async with world.running():
        answer = await image_job(world)
        used = await world.resources.credits.credits_used(int(world.discord.guild_id))
        jobs = await world.resources.store.jobs_in(("reserved", "submitted", "failed", "delivered"))
    assert "takes no end frame" in answer
    assert used == 0 and jobs == [] and not [r for r in world.sim.requests if r.method == "POST"]
