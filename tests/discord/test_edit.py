"""Edit under a video, through the real bot, the fake Discord and the simulator: a form prefilled with the prompt,
duration and sound, whose answer is a new job of the presser with the edited prompt and the original's other options
(and frames), charged to the presser, shown in their history as edited from the original; sent twice at once it makes
one job; a bad prompt charges nothing; the button works after a restart."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.model import Job
from tests.conftest import make_image
from tests.fake_discord import Interaction, wait_until
from tests.harness import Harness, harness, private_answer

PROMPT, DURATION, SOUND = "Prompt", "Duration in seconds (3-15)", "Sound (on or off; empty: the default)"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides = {"member_jobs_in_flight": 10}
        yield running


async def jobs_of(world: Harness, user: str) -> list[Job]:
    """A member's jobs in the server, oldest first."""
    user_id = int(world.discord.users[user]["id"])
    return list(reversed(await world.resources.jobs.member_jobs(int(world.discord.guild_id), user_id, limit=50)))


async def delivered_of(world: Harness, user: str, count: int) -> list[Job]:
    found: list[Job] = []

    async def ready() -> bool:
        found[:] = [j for j in await jobs_of(world, user) if j.status == "delivered"]
        return len(found) >= count

    await wait_until(ready)
    return found


async def credits_held(world: Harness, user: str) -> int:
    """Milli-credits used or reserved by a member."""
    fake = world.discord
    status = await world.resources.credits.status(int(fake.guild_id), int(fake.users[user]["id"]), ())
    return status.used + status.reserved


def video_post(world: Harness, job: Job) -> dict[str, Any]:
    message = world.discord.find_message(str(job.result_message_id))
    return message | {"channel_id": str(job.thread_id)}


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """The labels of a message's buttons, by custom id."""
    return {b["custom_id"]: b["label"] for row in message["components"] for b in row["components"]}


def prefilled(shown: Interaction) -> dict[str, Any]:
    assert shown.modal is not None
    return {row["components"][0]["label"]: row["components"][0].get("value") for row in shown.modal["components"]}


async def edit_form(world: Harness, original: Job, user: str) -> Interaction:
    shown = await world.discord.press(f"video:edit:{original.id}", video_post(world, original), user=user)
    await wait_until(lambda: shown.modal is not None or shown.texts())
    return shown


def submits(world: Harness) -> list[Any]:
    return [r.json for r in world.sim.requests if r.method == "POST"]


async def test_edit_is_prefilled_and_makes_the_pressers_job_with_the_originals_options(world: Harness) -> None:
    fake = world.discord
    options = {"prompt": "a heron", "aspect_ratio": "9:16", "resolution": "1080p", "duration": 4, "sound": "off"}
    async with world.running():
        await private_answer(await fake.slash("video", options, sub="text"))
        [original] = await delivered_of(world, "alice", 1)
        labels = buttons(video_post(world, original))
        shown = await edit_form(world, original, "bob")
        form = prefilled(shown)
        sent = await fake.submit_modal(shown, {PROMPT: "a heron at dusk", DURATION: "6"}, user="bob")
        answer = await private_answer(sent)
        [edited] = await delivered_of(world, "bob", 1)
        history = await private_answer(await fake.slash("video", {}, sub="history", user="bob"))
        alice, bob = await credits_held(world, "alice"), await credits_held(world, "bob")
    assert labels[f"video:edit:{original.id}"] == "Edit · 4 credits"  # as Re-roll: the original's options
    assert form == {PROMPT: "a heron", DURATION: "4", SOUND: "off"}
    assert "on its way" in answer and "Cost: 6 credits" in answer
    first, second = submits(world)
    assert second["prompt"] == "a heron at dusk"
    assert second["settings"] == {"aspect_ratio": "9:16", "resolution": "1080p", "duration": 6, "audio": "off"}
    assert first["settings"] | {"duration": 6} == second["settings"]
    assert (edited.user_id, edited.edited_from) == (int(fake.users["bob"]["id"]), original.id)
    assert (alice, bob) == (4000, 6000)  # 4 s and 6 s at 1080p: the edit is the presser's
    assert f"edited from `{original.id[:8]}`" in history
    assert edited.channel_id == original.channel_id  # its card beside the original's, with a thread of its own
    assert edited.thread_id not in (None, original.thread_id)


async def test_an_edited_image_video_keeps_its_first_frame(world: Harness) -> None:
    fake = world.discord
    png = make_image(640, 480)
    async with world.running():
        image = fake.add_attachment("frame.png", png, "image/png", 640, 480)
        await private_answer(await fake.slash("video", {"image": image, "prompt": "it moves"}, sub="image"))
        [original] = await delivered_of(world, "alice", 1)
        shown = await edit_form(world, original, "alice")
        form = prefilled(shown)
        await private_answer(await fake.submit_modal(shown, {"Prompt (optional)": "it dances"}))
        await delivered_of(world, "alice", 2)
    first, second = submits(world)
    assert form["Prompt (optional)"] == "it moves"
    frames = [[c for c in body["contents"] if c["type"] == "first_frame"] for body in (first, second)]
    assert frames[0] == frames[1] and base64.b64decode(frames[1][0]["url"]) == png
    assert [c["text"] for c in second["contents"] if c["type"] == "prompt"] == ["it dances"]


async def test_an_edit_form_sent_twice_at_once_makes_one_job_and_one_charge(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await private_answer(await fake.slash("video", {"prompt": "a fox", "duration": 3}, sub="text"))
        [original] = await delivered_of(world, "alice", 1)
        shown = await edit_form(world, original, "bob")
        values = {PROMPT: "a fox in snow"}
        sent = await asyncio.gather(*(fake.submit_modal(shown, values, user="bob") for _ in range(2)))
        await wait_until(lambda: all(s.callbacks for s in sent))
        await delivered_of(world, "bob", 1)
        await world.more_ticks(5)  # a second job, if any, would be written and sent by now
        assert len(await jobs_of(world, "bob")) == 1 and len(world.sim.tasks) == 2
        assert await credits_held(world, "bob") == 2400
    await wait_until(lambda: all(s.texts() for s in sent))
    texts = sorted(s.texts()[-1] for s in sent)
    assert "already confirmed" in texts[0] and "on its way" in texts[1]


async def test_a_bad_edit_is_answered_and_charges_nothing(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await private_answer(await fake.slash("video", {"prompt": "a lake"}, sub="text"))
        [original] = await delivered_of(world, "alice", 1)
        told = []
        for values in ({PROMPT: "   "}, {PROMPT: "x" * 3100}, {DURATION: "ten"}, {SOUND: "loud"}):
            shown = await edit_form(world, original, "bob")
            told.append(await private_answer(await fake.submit_modal(shown, values, user="bob")))
        await world.more_ticks(3)
        assert await jobs_of(world, "bob") == [] and await credits_held(world, "bob") == 0
        assert len(world.sim.tasks) == 1
    assert "The prompt is empty" in told[0]
    assert "The prompt is 3100 characters; text videos allow at most 3072." in told[1]
    assert "The duration must be a whole number from 3 to 15, not 'ten'." in told[2]
    assert "The sound must be on or off, not loud." in told[3]
    assert all("Nothing was sent or charged." in text for text in told)


async def test_an_edit_above_the_threshold_waits_for_confirm(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await private_answer(await fake.slash("video", {"prompt": "a lake", "duration": 3}, sub="text"))
        [original] = await delivered_of(world, "alice", 1)
        await private_answer(await fake.slash("quota-admin", {"credits": "3"}, sub="confirm-above", user="mod"))
        shown = await edit_form(world, original, "bob")
        asked = await private_answer(await fake.submit_modal(shown, {DURATION: "5"}, user="bob"))
        await world.more_ticks(3)
        assert await jobs_of(world, "bob") == [] and await credits_held(world, "bob") == 0
    assert "waits for your Confirm" in asked and re.search(r"Cost: 4 credits", asked)


async def test_the_edit_button_works_after_a_restart(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await private_answer(await fake.slash("video", {"prompt": "an owl", "duration": 3}, sub="text"))
        [original] = await delivered_of(world, "alice", 1)
    async with world.running():  # a new process: only the custom id is left of the button
        shown = await edit_form(world, original, "alice")
        assert prefilled(shown)[PROMPT] == "an owl"
        await private_answer(await fake.submit_modal(shown, {PROMPT: "an owl, flying"}))
        [_, edited] = await delivered_of(world, "alice", 2)
    assert edited.edited_from == original.id and submits(world)[-1]["prompt"] == "an owl, flying"
