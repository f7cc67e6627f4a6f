"""The bot end to end through the fake Discord (REST, gateway, CDN) and the Kling simulator."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from bot.provider.sim_videos import sample_video
from tests.conftest import make_image
from tests.fake_discord import wait_until
from tests.fakes.discord.wire import Recorded
from tests.harness import Harness, harness, private_answer


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
    assert "The video will be posted below." in status["content"]  # and it was: no edit needed to say so
    fields = {f["name"]: f["value"] for f in card["embeds"][0]["fields"]}
    assert fields["State"] == "done" and str(job.result_message_id) in fields["Video"]
    assert video["files"] == [(f"video-{job.id[:8]}.mp4", sample_video())]
    assert video["content"] == f"<@{fake.users['alice']['id']}> your video is ready."
    assert video["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])]}
    assert [c["custom_id"] for c in video["components"][0]["components"]] == [
        f"video:reroll:{job.id}",
        f"video:edit:{job.id}",
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


async def test_animate_image_from_the_message_menu_and_its_modal(world: Harness) -> None:
    fake = world.discord
    png = make_image(500, 500)
    async with world.running():
        message = fake.post_message(
            fake.general, fake.users["bob"], "look", attachments=[fake.add_attachment("cat.png", png, "image/png")]
        )
        shown = await fake.message_menu("Animate image", message)
        await wait_until(lambda: shown.modal is not None)
        assert [row["components"][0]["label"] for row in shown.modal["components"]] == [
            "Prompt (optional)",
            "Duration in seconds (3-15)",
            "Resolution (720p or 1080p)",
            "Sound (on or off; empty: the default)",
        ]
        await fake.submit_modal(shown, {"Prompt (optional)": "the cat blinks", "Duration in seconds (3-15)": "4"})
        job = await world.job_in("delivered")
    assert (job.kind, job.prompt, job.duration, job.image_source) == ("image", "the cat blinks", 4, "cat.png")
    [post] = submits(world)
    assert post.json["contents"][0]["url"] == base64.b64encode(png).decode()


async def test_animate_image_on_a_message_without_an_image_says_so(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        message = fake.post_message(fake.general, fake.users["bob"], "no picture here")
        shown = await fake.message_menu("Animate image", message)
        await shown.answered.wait()
    assert shown.ephemeral() and "no image attached" in shown.texts()[0]


@pytest.mark.parametrize(
    ("image", "values", "expected"),
    [
        ((500, 500), {"Duration in seconds (3-15)": "soon"}, "The duration must be a whole number"),
        ((500, 500), {"Duration in seconds (3-15)": "99"}, "from 3 to 15"),
        ((500, 500), {"Resolution (720p or 1080p)": "4k"}, "The resolution must be 720p or 1080p"),
        ((200, 200), {}, "at least 300 pixels"),
        ((500, 500), {"Duration in seconds (3-15)": "15", "Resolution (720p or 1080p)": "1080p"}, "credits"),
    ],
    ids=["words", "too-long", "resolution", "small-image", "over-quota"],
)
async def test_animate_image_answers_member_mistakes_like_video_image(
    world: Harness, image: tuple[int, int], values: dict[str, str], expected: str
) -> None:
    fake = world.discord
    world.settings_overrides = {"default_quota_credits": 10}  # 15 s at 1080p costs 15 credits
    async with world.running():
        png = make_image(*image)
        message = fake.post_message(
            fake.general, fake.users["bob"], "look", attachments=[fake.add_attachment("cat.png", png, "image/png")]
        )
        shown = await fake.message_menu("Animate image", message)
        await wait_until(lambda: shown.modal is not None)
        answer = await fake.submit_modal(shown, values)
        await wait_until(lambda: answer.messages and not answer.messages[0]["flags"] & 128)
    text = answer.texts()[-1]
    assert expected in text and "went wrong" not in text and answer.ephemeral()
    assert submits(world) == []


async def test_once_accepted_a_refused_status_post_never_says_nothing_was_charged(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        # Discord refuses the bot's first post in the new thread (its status message).
        fake.fail_next("POST", rf"/channels/(?!{fake.general})\d+/messages$", 403, 50013, "Missing Permissions")
        interaction = await fake.slash("video", {"prompt": "carry on"}, sub="text")
        await wait_until(lambda: interaction.texts() and "Thinking" not in interaction.texts()[-1])
        world.sim.hold = False
        world.sim.finish()
        await world.job_in("delivered")
    answer = " ".join(interaction.texts())
    assert "on its way" in answer and "charged" not in answer
    [thread] = fake.threads()
    assert any(m["files"] for m in fake.messages[thread["id"]])


def pdf_attachment(world: Harness) -> dict:
    return world.discord.add_attachment("photo.png", b"%PDF-1.7 pretending", "image/png", 600, 600)


@pytest.mark.parametrize(
    ("command", "options", "expected"),
    [
        ("text", {"prompt": "   "}, "The prompt is empty"),
        ("text", {"prompt": "x" * 3073}, "at most 3072"),
        ("text", {"prompt": "ok", "duration": 20}, "from 3 to 15"),
        ("text", {"prompt": "ok", "aspect_ratio": "4:3"}, "16:9, 9:16 or 1:1"),
        ("image", {"image": "pdf"}, "not a readable image"),
        ("image", {"image": (200, 600)}, "at least 300 pixels"),
        ("image", {"image": (300, 800)}, "too elongated"),
        ("image", {"image": "gif"}, "GIF image"),
        ("image", {"image": "huge"}, "send an image under"),
        ("image", {"image": (640, 480), "prompt": "y" * 2501}, "at most 2500"),
    ],
    ids=["empty", "long", "duration", "aspect", "pdf", "small", "elongated", "gif", "huge", "long-image-prompt"],
)
async def test_invalid_input_is_answered_privately_and_nothing_is_sent_or_written(
    world: Harness, command: str, options: dict, expected: str
) -> None:
    fake = world.discord
    async with world.running():
        if command == "image":
            kind = options["image"]
            if kind == "pdf":
                options["image"] = pdf_attachment(world)
            elif kind == "gif":
                options["image"] = fake.add_attachment("a.gif", make_image(400, 400, "GIF"), "image/gif")
            elif kind == "huge":
                options["image"] = fake.add_attachment("big.png", b"0" * (40 * 1024 * 1024), "image/png")
            else:
                options["image"] = fake.add_attachment("a.png", make_image(*kind), "image/png", *kind)
        interaction = await fake.slash("video", options, sub=command)
        await wait_until(lambda: interaction.messages and not interaction.messages[0]["flags"] & 128)
        assert await world.resources.store.jobs_in(("reserved", "failed", "submitted")) == []
    assert interaction.ephemeral(0), interaction.messages
    assert expected in interaction.texts()[0]
    assert world.sim.requests == []
    assert fake.messages[fake.general] == [] and fake.threads() == []


async def test_a_content_policy_refusal_is_explained_and_charges_nothing(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        interaction = await fake.slash("video", {"prompt": "something forbidden"}, sub="text")
        job = await world.job_in("failed")
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
    assert "content policy" in interaction.texts()[0] and interaction.ephemeral(0)
    assert "content policy" in (job.error or "")
    assert (status.used, status.reserved) == (0, 0)
    assert fake.messages[fake.general] == []


async def test_a_video_too_large_for_the_server_is_posted_as_a_link(world: Harness) -> None:
    fake = world.discord
    world.sim.video_bytes = b"\x00\x00\x00\x18ftypmp42" + bytes(2 * 1024 * 1024)
    async with world.running():
        await fake.slash("video", {"prompt": "a long take"}, sub="text", attachment_size_limit=1024 * 1024)
        job = await world.job_in("delivered")
    [thread] = fake.threads()
    video = fake.messages[thread["id"]][-1]
    assert video["files"] == []
    assert job.video_url in video["content"] and "expires" in video["content"]


async def test_in_a_forum_post_the_job_is_posted_in_place_and_says_so_once(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        interaction = await fake.slash("video", {"prompt": "forum clip"}, sub="text", channel=fake.forum_post)
        job = await world.job_in("delivered")
    assert job.thread_id is None
    card, video = fake.messages[fake.forum_post]
    assert card["embeds"][0]["footer"]["text"].startswith("A thread could not be started here")
    assert sum("thread could not be started" in str(m) for m in fake.messages[fake.forum_post]) == 1
    assert video["files"] and "this channel" in interaction.texts()[0]
    assert card["content"].startswith("✅ **Done**")  # the card doubles as the status message


ALL_NEEDED = dict(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
)


@pytest.mark.parametrize(
    ("lacking", "named"),
    [
        ("view_channel", "View Channel"),
        ("send_messages", "Send Messages"),
        ("create_public_threads", "Create Public Threads"),
        ("embed_links", "Embed Links"),
        ("attach_files", "Attach Files"),
    ],
)
async def test_a_missing_permission_is_named_before_anything_is_charged(
    world: Harness, lacking: str, named: str
) -> None:
    fake = world.discord
    fake.bot_permissions[fake.general] = discord.Permissions(**(ALL_NEEDED | {lacking: False})).value
    async with world.running():
        interaction = await fake.slash("video", {"prompt": "no room"}, sub="text")
        await wait_until(lambda: interaction.messages and not interaction.messages[0]["flags"] & 128)
        assert await world.resources.store.count_in(("reserved", "queued", "submitted", "failed", "cancelled")) == 0
    [answer] = interaction.texts()
    assert named in answer and "moderator" in answer and "Nothing was charged" in answer
    assert interaction.ephemeral()
    assert submits(world) == [] and fake.messages[fake.general] == []


async def test_inside_a_thread_the_bot_needs_send_messages_in_threads(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "parent"}, sub="text")
        await world.job_in("delivered")
        [thread] = fake.threads()
        lacking = ALL_NEEDED | {"send_messages_in_threads": False}
        fake.bot_permissions[thread["id"]] = discord.Permissions(**lacking).value
        interaction = await fake.slash("video", {"prompt": "inside"}, sub="text", channel=thread["id"])
        await wait_until(lambda: interaction.messages and not interaction.messages[0]["flags"] & 128)
    assert "Send Messages in Threads" in interaction.texts()[0]
    assert len(submits(world)) == 1


async def test_mentions_in_the_prompt_ping_nobody(world: Harness) -> None:
    fake = world.discord
    prompt = f"@everyone @here <@&{fake.moderator_role}> <@{fake.users['bob']['id']}> dance"
    async with world.running():
        await fake.slash("video", {"prompt": prompt}, sub="text")
        await world.job_in("delivered")
    [thread] = fake.threads()
    posted = [m for r in fake.posted("POST", r"/messages$") for m in [r.json]]
    edits = [r.json for r in fake.posted("PATCH", r"/messages/")]
    assert posted and edits
    for body in posted + edits:
        mentions = body.get("allowed_mentions")
        assert mentions is not None and mentions["parse"] == [], body
        assert mentions.get("users", []) in ([], [int(fake.users["alice"]["id"])])
        assert "roles" not in mentions or mentions["roles"] == []
    assert fake.messages[fake.general][0]["embeds"][0]["description"].endswith("dance")
    assert "@everyone" not in fake.messages[thread["id"]][-1]["content"]


async def test_a_discord_server_error_while_posting_is_retried(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "flaky"}, sub="text")
        await wait_until(lambda: fake.threads() and fake.messages[fake.threads()[0]["id"]])  # the status is in
        thread_id = fake.threads()[0]["id"]
        fake.fail_next("POST", rf"/channels/{thread_id}/messages$", 403, 50013, "Missing Permissions", times=2)
        job = await world.job_in("delivered")
    assert job.delivery_attempts == 2
    assert len([m for m in fake.messages[thread_id] if m["files"]]) == 1


async def test_a_members_answer_does_not_wait_for_the_jobs_thread(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        fake.delay_next("POST", r"/threads$", 3.0)  # the thread waits its turn at Discord
        started = await fake.slash("video", {"prompt": "answer me first"}, sub="text")
        await wait_until(lambda: started.told_at is not None)
        told, threads_then = started.texts()[-1], len(fake.threads())
        await wait_until(lambda: len(fake.threads()) == 1)
        thread = fake.threads()[0]["id"]
        await wait_until(lambda: f"<#{thread}>" in started.texts()[-1])  # then the answer points at the thread
    assert "on its way" in told and "this channel" in told and "Cost:" in told
    assert threads_then == 0  # told while the thread was still being opened


async def test_a_members_delete_goes_before_the_deliveries_waiting_for_their_turn(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides |= {"member_jobs_in_flight": 10, "server_jobs_in_flight": 10}
    async with world.running() as bot:
        await fake.slash("video", {"prompt": "mine"}, sub="text")
        mine = await world.job_in("delivered")
        world.sim.hold = True
        for n in range(5):
            await fake.slash("video", {"prompt": f"flood {n}"}, sub="text", user="bob")
        await wait_until(lambda: len(world.sim.tasks) == 6)
        await world.more_ticks(3)
        bot.pace.limit = 1  # ten background requests (five posts, five card edits) now take ten seconds
        before = len(fake.requests)
        world.sim.finish()
        await wait_until(lambda: len(fake.requests) > before)  # the first delivery's post is through
        [thread] = [t for t in fake.threads() if t["id"] == str(mine.thread_id)]
        pressed = await fake.press(f"video:delete:{mine.id}", str(mine.result_message_id))
        await wait_until(lambda: pressed.texts() == ["Deleted."], within=20)
        bot.pace.limit = 45
        paced = [r for r in fake.requests[before:] if not r.path.startswith(("/interactions/", "/webhooks/"))]
    position = next(n for n, r in enumerate(paced) if r.method == "DELETE")
    assert position <= 1, [f"{r.method} {r.path}" for r in paced]  # the next turn, not behind the deliveries
    assert thread


async def test_reroll_and_delete_work_after_a_restart(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a paper boat", "duration": 3, "aspect_ratio": "9:16"}, sub="text")
        original = await world.job_in("delivered")
    [thread] = fake.threads()
    video = fake.messages[thread["id"]][-1]
    async with world.running():  # a new process in all but name: no view state survives
        reroll = await fake.press(f"video:reroll:{original.id}", video, user="bob")
        await wait_until(lambda: len(fake.threads()) == 2)
        refused = await fake.press(f"video:delete:{original.id}", video, user="bob")
        await refused.answered.wait()
        deleted = await fake.press(f"video:delete:{original.id}", video, user="alice")
        await wait_until(lambda: video not in fake.messages[thread["id"]])
        jobs = await world.resources.store.member_jobs(int(fake.guild_id), int(fake.users["bob"]["id"]))
    assert "on its way" in reroll.texts()[0]
    [again] = jobs
    assert (again.prompt, again.duration, again.aspect_ratio, again.channel_id) == (
        "a paper boat", 3, "9:16", int(fake.general),
    )  # fmt: skip
    assert "Only the member who asked" in refused.texts()[0] and refused.ephemeral()
    assert deleted.texts() == ["Deleted."]


async def test_a_moderator_may_delete_anyones_video(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "mod cleanup"}, sub="text")
        job = await world.job_in("delivered")
        [thread] = fake.threads()
        video = fake.messages[thread["id"]][-1]
        pressed = await fake.press(f"video:delete:{job.id}", video, user="mod")
        await wait_until(lambda: video not in fake.messages[thread["id"]])
        await wait_until(lambda: pressed.texts() and pressed.texts()[-1] == "Deleted.")
    assert pressed.ephemeral()


async def test_stopped_while_rendering_and_started_again_delivers_exactly_once(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        await fake.slash("video", {"prompt": "patience"}, sub="text")
        await world.job_in("processing")
    world.sim.finish()
    async with world.running():
        job = await world.job_in("delivered")
        await world.more_ticks(5)  # nothing more may be posted in them
    videos = [m for m in fake.messages[str(job.thread_id)] if m["files"]]
    assert len(videos) == 1 and len(submits(world)) == 1


async def test_status_and_history(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        for n in range(2):
            await fake.slash("video", {"prompt": f"clip {n}"}, sub="text")
            await wait_until(lambda n=n: len(fake.threads()) == n + 1)

        async def both_have_threads() -> bool:
            jobs = await world.resources.store.member_jobs(int(fake.guild_id), int(fake.users["alice"]["id"]))
            return len(jobs) == 2 and all(j.thread_id for j in jobs)

        await wait_until(both_have_threads)
        status = await fake.slash("video", {}, sub="status")
        await wait_until(lambda: status.texts() and status.texts()[0])
        history = await fake.slash("video", {}, sub="history")
        await wait_until(lambda: history.texts() and history.texts()[0])
        world.sim.finish()
    text = status.texts()[0]
    assert text.startswith("**Your videos in progress**") and text.count("elapsed") == 2
    assert all(f"<#{t['id']}>" in text for t in fake.threads())
    assert "page 1 of 1" in history.texts()[0] and history.ephemeral()


async def test_status_edits_are_throttled_while_jobs_render(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    world.settings_overrides = {"member_jobs_in_flight": 50, "server_jobs_in_flight": 50, "provider_concurrency": 50}
    async with world.running():
        for n in range(12):
            await fake.slash("video", {"prompt": f"throttle {n}"}, sub="text")
        edits = r"^/channels/\d+/messages/"  # the cards and status messages (not the members' answers)

        def rendering() -> list[Recorded]:  # a job first seen "submitted" has an edit before these: a real change
            return [r for r in fake.posted("PATCH", edits) if "rendering" in str(r.json).lower() and r.status != 429]

        await wait_until(lambda: len(rendering()) >= 24, within=45)
        before = len(fake.posted("PATCH", edits))
        await world.more_ticks(20)  # the times are Discord timestamps: no edit is ever due to advance them
        after = len(fake.posted("PATCH", edits))
        world.sim.finish()
    # Each job: its status message and its card once on "rendering"; nothing more while it renders.
    assert len(rendering()) == 24 and after == before


async def test_queued_jobs_show_their_place_and_can_be_cancelled(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    world.settings_overrides = {"provider_concurrency": 1}
    async with world.running():
        for n in range(3):
            await fake.slash("video", {"prompt": f"line {n}"}, sub="text", user="bob" if n == 2 else "alice")
            await wait_until(lambda n=n: len(fake.threads()) == n + 1 and fake.messages[fake.threads()[n]["id"]])
        threads = fake.threads()
        second, third = threads[1]["id"], threads[2]["id"]
        await wait_until(lambda: fake.messages[second][0]["content"] == "🕒 **Queued**: number 1 in line.")
        await wait_until(lambda: fake.messages[third][0]["content"] == "🕒 **Queued**: number 2 in line.")
        queued = await world.resources.store.jobs_in(("queued",))
        cancel = await fake.slash("video", {"job": queued[0].id[:8]}, sub="cancel")
        await wait_until(lambda: cancel.texts() and cancel.texts()[0].startswith("Cancelled"))
        await wait_until(lambda: fake.messages[third][0]["content"] == "🕒 **Queued**: number 1 in line.")
        await wait_until(lambda: fake.messages[second][0]["content"] == "**Cancelled**.")
        world.sim.hold = False
        world.sim.finish()
        await wait_until(lambda: any(m["files"] for m in fake.messages[third]))
    assert len(world.sim.tasks) == 2


async def test_an_exhausted_account_is_reported_once_to_each_log_channel(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        world.sim.fail_next("credits", on="submit")
        first = await fake.slash("video", {"prompt": "one"}, sub="text")
        await wait_until(lambda: first.texts() and "on its way" in first.texts()[0])
        second = await fake.slash("video", {"prompt": "two"}, sub="text", user="bob")
        await wait_until(lambda: second.texts() and "Loading" not in second.texts()[0] and second.texts()[0])
        await wait_until(lambda: fake.messages[fake.log_channel])
        await world.more_ticks(5)  # time for a second alert, which must not come
    alerts = [m["content"] for m in fake.messages[fake.log_channel] if m["content"].startswith("⚠️")]
    assert len(alerts) == 1 and "out of credits" in alerts[0]
    assert "account needs an operator" in second.texts()[0] and second.ephemeral()


async def test_after_a_gateway_disconnect_the_bot_carries_on_and_delivers_once(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        await fake.slash("video", {"prompt": "through the storm"}, sub="text")
        await world.job_in("processing")
        fake.identified.clear()
        await fake.drop_gateway()
        world.sim.hold = False
        world.sim.finish()
        await world.job_in("delivered")  # the poll loop kept going while the gateway was away
        await wait_until(lambda: fake.connected, within=10)  # reconnected
        after = await fake.slash("video", {"prompt": "after the storm"}, sub="text")
        await wait_until(lambda: after.texts() and "on its way" in after.texts()[0], within=10)
        await wait_until(lambda: len(fake.threads()) == 2)
        await wait_until(lambda: any(m["files"] for m in fake.messages[fake.threads()[1]["id"]]))
    first = fake.threads()[0]["id"]
    assert len([m for m in fake.messages[first] if m["files"]]) == 1


async def test_a_render_failure_is_explained_in_the_thread_and_refunded(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "please fail-render now"}, sub="text")
        job = await world.job_in("failed")
        await wait_until(lambda: fake.threads() and len(fake.messages[fake.threads()[0]["id"]]) == 2)
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
    [thread] = fake.threads()
    status_message, told = fake.messages[thread["id"]]
    assert status_message["content"].startswith("❌ **Failed**: The video service failed: Video generation failed")
    assert told["content"].startswith(f"<@{fake.users['alice']['id']}> your video could not be made")
    assert told["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])]}
    assert job.error and (status.used, status.reserved) == (0, 0)


async def test_while_the_service_is_down_a_member_may_choose_to_queue(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        breaker = world.resources.kling.breaker
        breaker.opened_at = breaker.clock()  # the provider has been failing: the circuit is open
        refused = await fake.slash("video", {"prompt": "when you can"}, sub="text")
        await wait_until(lambda: refused.texts() and "not answering" in refused.texts()[0])
        assert refused.ephemeral() and world.sim.requests == []
        [button] = refused.messages[0]["components"][0]["components"]
        assert button["label"] == "Queue it for when the service is back"
        chosen = await fake.press(button["custom_id"], refused.messages[0])
        job = await world.job_in("queued")
        await wait_until(lambda: chosen.texts() and "on its way" in chosen.texts()[0])
        assert world.sim.requests == []  # nothing is sent while the circuit is open
        breaker.opened_at = breaker.clock() - breaker.cooldown  # time for one probe: the queued job
        delivered = await world.job_in("delivered")
    assert delivered.id == job.id and len(world.sim.tasks) == 1


async def test_job_autocomplete_offers_the_members_jobs_within_discords_limits(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a very long prompt " * 20}, sub="text")
        job = await world.job_in("delivered")
        focused = {"name": "job", "type": 3, "value": "", "focused": True}
        data = {
            "id": fake.snowflake(), "name": "video", "type": 1, "guild_id": fake.guild_id,
            "options": [{"name": "status", "type": 1, "options": [focused]}],
        }  # fmt: skip
        asked = await fake.interact(4, data, user="alice", channel=fake.general)
        await wait_until(lambda: asked.callbacks)
    [answer] = asked.callbacks
    assert answer["type"] == 8
    [choice] = answer["data"]["choices"]
    assert choice["value"] == job.id and choice["name"].startswith(f"{job.id[:8]} · done")
    assert len(choice["name"]) <= 100


async def test_a_command_in_flight_at_shutdown_finishes_before_the_store_closes(
    world: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    fake = world.discord
    async with world.running():
        world.sim.fail_next("slow", on="submit", delay=1.0)  # the provider takes its time to answer
        interaction = await fake.slash("video", {"prompt": "just before the stop"}, sub="text")
        await wait_until(lambda: any(r.method == "POST" for r in world.sim.requests))
    # Leaving the block stopped the bot while the command waited on the provider.
    assert "on its way" in interaction.texts()[-1]
    assert "Connection closed" not in caplog.text and "failed" not in caplog.text


async def test_a_command_arriving_during_shutdown_is_refused_and_charges_nothing(world: Harness) -> None:
    fake = world.discord
    async with world.running() as bot:
        world.sim.fail_next("slow", on="submit", delay=2.0)  # a command in flight holds the shutdown open
        first = await fake.slash("video", {"prompt": "just before the stop"}, sub="text")
        await wait_until(lambda: any(r.method == "POST" for r in world.sim.requests))
        stopping = asyncio.create_task(bot.close())
        await wait_until(lambda: bot.closing)
        late = await fake.slash("video", {"prompt": "during the stop"}, sub="text", user="bob")
        answer = await private_answer(late)
        history = await private_answer(await fake.slash("video", {}, sub="history", user="bob"))  # reads the store
        await stopping
    assert "restarting" in answer and "Nothing was charged" in answer
    assert "restarting" in history
    assert "on its way" in first.texts()[-1]  # the one in flight finished
    assert [r.json["prompt"] for r in world.sim.requests if r.method == "POST"] == ["just before the stop"]


async def test_a_delivered_video_costs_two_discord_requests(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    async with world.running():
        await fake.slash("video", {"prompt": "count the requests"}, sub="text")
        await world.job_in("processing")
        await wait_until(lambda: len(fake.posted("PATCH", "/messages/")) >= 2)  # "rendering" shown
        await world.more_ticks(3)
        before = len(fake.requests)
        world.sim.finish()
        await world.job_in("delivered")
        await world.more_ticks(3)  # whatever else the delivery causes has happened
        requests = fake.requests[before:]
    assert [(r.method, r.path.split("/")[-1]) for r in requests] == [
        ("POST", "messages"),  # the video, in the thread
        ("PATCH", requests[1].path.split("/")[-1]),  # the card: done, and where the video is
    ]
