"""Sound through the bot: the choice on the commands and forms reaches `settings.audio`, a server's default stands
when the member does not choose, sound has its own rate, and a gateway that refuses the field is told to the member
in the job's first answer (sent again without it, charged as silent) and not offered again."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.provider.sim_variant import GatewayVariant
from tests.conftest import make_image
from tests.fake_discord import wait_until
from tests.harness import Harness, harness, private_answer

COST = re.compile(r"Cost: (\S+) credits")
SOUND_INPUT = "Sound (on or off; empty: the default)"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides = {"member_jobs_in_flight": 10}
        yield running


def sent_audio(world: Harness) -> list[Any]:
    return [r.json["settings"].get("audio", "absent") for r in world.sim.requests if r.method == "POST"]


async def started(world: Harness, options: dict[str, Any], sub: str = "text") -> str:
    interaction = await world.discord.slash("video", options, sub=sub)
    await wait_until(lambda: interaction.texts() and "on its way" in interaction.texts()[-1])
    return await private_answer(interaction)


async def test_the_commands_send_sound_as_chosen_and_the_servers_default_otherwise(world: Harness) -> None:
    fake = world.discord
    png = make_image(640, 480)
    async with world.running():
        on = await started(world, {"prompt": "a storm", "sound": "on"})
        image = fake.add_attachment("frame.png", png, "image/png", 640, 480)
        off = await started(world, {"image": image, "sound": "off"}, sub="image")
        await started(world, {"prompt": "the provider decides"})
        admin = await fake.slash("quota-admin", {"default": "off"}, sub="sound", user="mod")
        assert "**sound**: provider → off" in await private_answer(admin)
        await started(world, {"prompt": "the server decides"})
        mine = await fake.slash("quota", {})
        shown = await private_answer(mine)
        await wait_until(lambda: len(world.sim.tasks) == 4)
        [entry] = await world.resources.credits.audit_entries(int(fake.guild_id))
    assert sent_audio(world) == ["native", "off", "absent", "off"]
    assert "with sound" in on and "silent" in off
    assert "Sound when not chosen: silent" in shown
    assert (entry.action, entry.before, entry.after) == ("sound", "provider", "off")


async def animate_image_form(world: Harness) -> tuple[Any, list[str]]:
    """Bob's Animate image on a message with a picture: the form shown and its fields' labels."""
    fake = world.discord
    message = fake.post_message(
        fake.general,
        fake.users["bob"],
        "look",
        attachments=[fake.add_attachment("cat.png", make_image(500, 500), "image/png")],
    )
    shown = await fake.message_menu("Animate image", message)
    await wait_until(lambda: shown.modal is not None)
    return shown, [row["components"][0]["label"] for row in shown.modal["components"]]


async def test_the_forms_offer_sound_and_continue_keeps_the_chains(world: Harness) -> None:
    fake = world.discord
    world.sim.task_videos = True
    async with world.running():
        shown, labels = await animate_image_form(world)
        assert labels[-1] == SOUND_INPUT
        form = await fake.submit_modal(shown, {SOUND_INPUT: "off"})
        assert "silent" in await private_answer(form)
        parent = await world.job_in("delivered")
        [thread] = fake.threads()
        video = next(m for m in fake.messages[thread["id"]] if m["files"])
        pressed = await fake.press(f"video:continue:{parent.id}", video)
        await wait_until(lambda: pressed.modal is not None)
        inputs = [row["components"][0] for row in pressed.modal["components"]]
        prefilled = {item["label"]: item.get("value") for item in inputs}
        assert prefilled[SOUND_INPUT] == "off"  # the chain's sound, unless changed
        sent = await fake.submit_modal(pressed, {"Prompt (optional)": "and on", SOUND_INPUT: "loud"})
        assert "The sound must be on or off, not loud." in await private_answer(sent)
    assert sent_audio(world) == ["off"]


async def test_sound_has_its_own_rate_in_the_first_answer(world: Harness) -> None:
    world.settings_overrides |= {"credits_per_second_720p_sound": 1.2}
    async with world.running():
        costs = [await started(world, {"prompt": f"fox {n}", **chosen}) for n, chosen in
                 enumerate(({"sound": "on"}, {"sound": "off"}, {}))]  # fmt: skip
    assert [m.group(1) for text in costs if (m := COST.search(text))] == ["6", "4", "6"]


async def test_a_gateway_refusing_sound_is_told_in_the_first_answer_and_not_offered_again(world: Harness) -> None:
    fake = world.discord
    world.sim.variant = GatewayVariant(audio="refuse")
    world.settings_overrides |= {"credits_per_second_720p_sound": 1.2}
    async with world.running():
        first = await started(world, {"prompt": "a storm with thunder", "sound": "on"})
        job = await world.job_in("delivered")
        _, labels = await animate_image_form(world)
        later = await started(world, {"prompt": "a quiet storm", "sound": "off"})
    assert "offers no sound control" in first and "charged as for a silent video" in first
    assert COST.search(first).group(1) == "4"  # type: ignore[union-attr]
    assert sent_audio(world) == ["native", "absent", "absent"]
    assert len(world.sim.tasks_for(job.id)) == 1 and job.sound_dropped and job.delivered_at
    [thread, *_] = fake.threads()
    video = next(m for m in fake.messages[thread["id"]] if m["files"])
    fields = {f["name"]: f["value"] for f in video["embeds"][0]["fields"]}
    assert fields["Sound"].startswith("this video service offers no sound control")
    assert SOUND_INPUT not in labels  # the form no longer offers it as if it worked
    assert "offers no sound control" in later


async def test_the_confirm_question_counts_the_rate_with_sound(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides |= {"credits_per_second_720p_sound": 1.2}
    async with world.running():
        await private_answer(await fake.slash("quota-admin", {"credits": "5"}, sub="confirm-above", user="mod"))
        asked = await private_answer(await fake.slash("video", {"prompt": "a loud sunset"}, sub="text"))
        silent = await started(world, {"prompt": "a quiet sunset", "sound": "off"})
    assert "costs more than 5 credits" in asked and COST.search(asked).group(1) == "6"  # type: ignore[union-attr]
    assert COST.search(silent).group(1) == "4"  # type: ignore[union-attr]
    assert sent_audio(world) == ["off"]
