"""Cost before spending: every video command's first answer shows the cost, what is left and when it resets; above a
server's confirm-above threshold nothing is reserved until the member presses Confirm."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_image
from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.harness import Harness, harness
from tests.harness import private_answer as answer

COST_LINE = re.compile(r"Cost: (\S+) credits · left: (\S+) · resets <t:\d+:R>")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


async def nothing_held(world: Harness) -> bool:
    """No job row at all, and no credits used or reserved by alice."""
    fake = world.discord
    status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
    return await world.resources.store.count_by_status() == {} and (status.used, status.reserved) == (0, 0)


async def set_threshold(fake: FakeDiscord, credits: str) -> str:
    return await answer(await fake.slash("quota-admin", {"credits": credits}, sub="confirm-above", user="mod"))


async def test_the_first_answer_shows_the_cost_what_is_left_and_the_reset(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        text = await fake.slash("video", {"prompt": "a heron", "duration": 5}, sub="text")
        await wait_until(lambda: text.texts() and "on its way" in text.texts()[-1])
        first = await world.job_in("delivered")
        image = fake.add_attachment("frame.png", make_image(640, 480), "image/png", 640, 480)
        # Its thread comes late, so its answer's last edit (naming the thread) comes after the re-roll's reservation.
        fake.delay_next("POST", r"/messages/\d+/threads$", 2.0)
        pic = await fake.slash("video", {"image": image, "duration": 3, "resolution": "1080p"}, sub="image")
        await wait_until(lambda: pic.texts() and "on its way" in pic.texts()[-1])
        [thread] = [t for t in fake.threads() if t["id"] == str(first.thread_id)]
        video = next(m for m in fake.messages[thread["id"]] if m["files"])
        reroll = await fake.press(f"video:reroll:{first.id}", video)
        await wait_until(lambda: reroll.texts() and "on its way" in reroll.texts()[-1])
        await wait_until(lambda: "<#" in pic.texts()[-1])
    # 5 s at 720p costs 4 of the default 50; then 3 s at 1080p costs 3; the re-roll 4 more.
    found = [COST_LINE.search(i.texts()[-1]) for i in (text, pic, reroll)]
    assert [(m.group(1), m.group(2)) for m in found if m] == [("4", "46"), ("3", "43"), ("4", "39")]


async def test_the_animate_form_answers_with_the_cost_too(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        png = make_image(500, 500)
        message = fake.post_message(
            fake.general, fake.users["bob"], "look", attachments=[fake.add_attachment("cat.png", png, "image/png")]
        )
        shown = await fake.message_menu("Animate image", message)
        await wait_until(lambda: shown.modal is not None)
        form = await fake.submit_modal(shown, {"Duration in seconds (3-15)": "10"})
        text = await answer(form)
    assert "on its way" in text
    match = COST_LINE.search(text)
    assert match and (match.group(1), match.group(2)) == ("8", "42")


async def test_above_the_threshold_nothing_is_reserved_until_confirm(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        assert "**confirm-above**: off → 3" in await set_threshold(fake, "3")
        asked = await fake.slash("video", {"prompt": "an expensive sunset", "duration": 5}, sub="text")
        question = await answer(asked)
        assert "costs more than 3 credits" in question and COST_LINE.search(question)
        assert "left: 50" in question  # nothing held yet
        buttons = asked.messages[-1]["components"][0]["components"]
        assert [b["label"] for b in buttons] == ["Confirm", "Cancel"]
        await world.more_ticks(3)
        assert await nothing_held(world) and world.sim.requests == []
        assert fake.messages[fake.general] == []  # no card either
        pressed = await fake.press(buttons[0]["custom_id"], asked.messages[-1])
        job = await world.job_in("delivered")
        started = await answer(pressed)
    assert "on its way" in started and "left: 46" in started
    assert asked.messages[-1]["content"] == "Confirmed." and asked.messages[-1]["components"] == []
    assert job.cost_estimate == 4000 and len(world.sim.tasks) == 1


async def test_at_or_below_the_threshold_the_job_starts_at_once(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await set_threshold(fake, "4")
        started = await fake.slash("video", {"prompt": "exactly four", "duration": 5}, sub="text")
        assert "on its way" in await answer(started)
        await world.job_in("delivered")


async def test_cancel_and_an_expired_confirmation_reserve_nothing(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides = {"confirm_timeout_seconds": 0.5}
    async with world.running():
        await set_threshold(fake, "1")
        cancelled = await fake.slash("video", {"prompt": "never mind"}, sub="text")
        await answer(cancelled)
        cancel = cancelled.messages[-1]["components"][0]["components"][1]
        await fake.press(cancel["custom_id"], cancelled.messages[-1])
        await wait_until(lambda: cancelled.messages[-1]["content"].startswith("Cancelled"))
        expiring = await fake.slash("video", {"prompt": "too slow"}, sub="text")
        await answer(expiring)
        shown = dict(expiring.messages[-1])  # as the member still sees it, buttons and all
        await wait_until(lambda: "expired" in expiring.messages[-1]["content"])
        assert expiring.messages[-1]["components"] == []
        late = await fake.press(shown["components"][0]["components"][0]["custom_id"], shown)
        await world.more_ticks(5)
        assert await nothing_held(world) and world.sim.requests == []
    assert "nothing was reserved or charged" in expiring.messages[-1]["content"]
    assert late.callbacks == []  # the expired view is gone: nothing answers, nothing starts


async def test_the_threshold_can_be_turned_off_and_bad_input_is_explained(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        assert "must" not in await set_threshold(fake, "2.5")
        assert "**confirm-above**: 2.5 → off" in await set_threshold(fake, "off")
        assert "a number of credits" in await set_threshold(fake, "lots")
        started = await fake.slash("video", {"prompt": "no question asked"}, sub="text")
        assert "on its way" in await answer(started)
        settings = await world.resources.credits.settings(int(fake.guild_id))
        entries = await world.resources.credits.audit_entries(int(fake.guild_id))
    assert settings.confirm_above is None
    assert [e.action for e in entries] == ["confirm-above", "confirm-above"]


# --- one charge per question --------------------------------------------------------------------------------


async def charged_once(world: Harness) -> None:
    """One job, one submit at the provider, and alice charged for it once (4 credits of 50)."""
    fake = world.discord
    status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
    assert await world.resources.store.count_by_status() == {"delivered": 1}
    assert len(world.sim.tasks) == 1 and status.remaining == 46_000


def assert_told_at_once(press: Interaction) -> None:
    """The second of two presses together is answered at once, privately, and starts nothing (no edit of the
    question, no "thinking"). Discord.py drops a press that arrives after the view stopped: no answer at all."""
    if press.callbacks:
        [told] = press.callbacks
        assert told["type"] == 4 and told["data"]["flags"] & 64
        assert "already confirmed" in told["data"]["content"]


async def test_confirm_pressed_twice_at_once_makes_one_job_and_one_charge(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await set_threshold(fake, "3")
        asked = await fake.slash("video", {"prompt": "a double click"}, sub="text")
        await answer(asked)
        shown = dict(asked.messages[-1])
        confirm = shown["components"][0]["components"][0]["custom_id"]
        presses = await asyncio.gather(fake.press(confirm, shown), fake.press(confirm, shown))
        await world.job_in("delivered")
        await wait_until(lambda: all(p.callbacks for p in presses) or fake.messages[fake.general])
        await world.more_ticks(5)  # a second job, if any, would be written and sent by now
        await charged_once(world)
    first, second = sorted(presses, key=lambda p: not any("on its way" in t for t in p.texts()))
    assert first.callbacks[0]["type"] == 7 and first.texts()[0] == "Confirmed."
    assert_told_at_once(second)


async def test_queue_it_pressed_twice_at_once_makes_one_job_and_one_charge(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        breaker = world.resources.kling.breaker
        breaker.opened_at = breaker.clock()  # the provider has been failing: new commands are offered the queue
        refused = await fake.slash("video", {"prompt": "when you can, once"}, sub="text")
        await wait_until(lambda: refused.texts() and "not answering" in refused.texts()[0])
        shown = dict(refused.messages[0])
        queue_it = shown["components"][0]["components"][0]["custom_id"]
        presses = await asyncio.gather(fake.press(queue_it, shown), fake.press(queue_it, shown))
        await world.job_in("queued")
        await wait_until(lambda: all(p.callbacks for p in presses) or fake.messages[fake.general])
        breaker.opened_at = breaker.clock() - breaker.cooldown  # time for one probe: the queued job
        await world.job_in("delivered")
        await world.more_ticks(5)
        await charged_once(world)
    first, second = sorted(presses, key=lambda p: not any("on its way" in t for t in p.texts()))
    assert "on its way" in first.texts()[-1]
    assert_told_at_once(second)


async def test_only_the_member_who_asked_can_confirm(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await set_threshold(fake, "3")
        asked = await fake.slash("video", {"prompt": "mine to confirm"}, sub="text")
        await answer(asked)
        shown = dict(asked.messages[-1])
        confirm = shown["components"][0]["components"][0]["custom_id"]
        stranger = await fake.press(confirm, shown, user="bob")
        told = await answer(stranger)
        await world.more_ticks(3)
        assert await nothing_held(world) and world.sim.requests == []
        assert asked.messages[-1]["components"]  # alice's question still stands
        mine = await fake.press(confirm, shown)
        await world.job_in("delivered")
        started = await answer(mine)
        await charged_once(world)
    assert "Only the member who asked" in told and "nothing was reserved or charged" in told
    assert "on its way" in started


async def test_a_confirmed_question_does_not_expire_later(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides = {"confirm_timeout_seconds": 0.5}
    async with world.running():
        await set_threshold(fake, "3")
        asked = await fake.slash("video", {"prompt": "confirmed in time"}, sub="text")
        await answer(asked)
        shown = dict(asked.messages[-1])
        pressed = await fake.press(shown["components"][0]["components"][0]["custom_id"], shown)
        await world.job_in("delivered")
        assert "on its way" in await answer(pressed)
        # A question asked after the Confirm, with the same time-out, expires after the first one would have.
        later = await fake.slash("video", {"prompt": "a later question"}, sub="text")
        await answer(later)
        await wait_until(lambda: "expired" in later.messages[-1]["content"])
        await world.more_ticks(3)
    assert asked.messages[-1]["content"] == "Confirmed."
    assert not any("expired" in m["content"] for m in asked.messages)


async def test_a_video_command_from_outside_a_server_reserves_and_sends_nothing(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        sent = await fake.slash("video", {"prompt": "from my DMs", "duration": 5}, sub="text", dm=True)
        told = await answer(sent)
        status = await fake.slash("video", {}, sub="status", dm=True)
        told_status = await answer(status)
        await world.more_ticks(3)
        assert await world.resources.store.count_by_status() == {}
        assert world.sim.requests == [] and fake.messages[fake.general] == []
    assert "only in a server" in told and "Nothing was charged" in told
    assert told_status == told


async def test_a_button_pressed_from_outside_a_server_reserves_and_sends_nothing(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a heron"}, sub="text")
        first = await world.job_in("delivered")
        [thread] = fake.threads()
        video = next(m for m in fake.messages[thread["id"]] if m["files"])
        asked = len(world.sim.requests)
        pressed = await fake.press(f"video:reroll:{first.id}", video, dm=True)
        told = await answer(pressed)
        await world.more_ticks(3)
        assert await world.resources.store.count_by_status() == {"delivered": 1}
        assert len(world.sim.requests) == asked
    assert "only in a server" in told and "Nothing was charged" in told


async def test_re_roll_pressed_twice_at_once_makes_one_new_job(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a heron, again"}, sub="text")
        first = await world.job_in("delivered")
        [thread] = fake.threads()
        video = next(m for m in fake.messages[thread["id"]] if m["files"])
        presses = await asyncio.gather(*(fake.press(f"video:reroll:{first.id}", video) for _ in range(2)))
        await wait_until(lambda: all(p.callbacks for p in presses))
        await wait_until(lambda: len(world.sim.tasks) == 2)
        await world.more_ticks(5)
        assert await world.resources.store.count_member_jobs(int(fake.guild_id), int(fake.users["alice"]["id"])) == 2
        assert len(world.sim.tasks) == 2
    await wait_until(lambda: any("on its way" in t for p in presses for t in p.texts()))
    first, second = sorted(presses, key=lambda p: not any("on its way" in t for t in p.texts()))
    assert_told_at_once(second)
