"""Moderator review: with `/quota-admin review #channel` a finished video goes to that channel first, with Approve
and Reject; only Approve lets it into the member's thread, Reject tells the member why and keeps the credits spent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.harness import Harness, harness


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.discord.add_channel("video-review", 0)
        yield running


async def answer(interaction: Interaction) -> str:
    await wait_until(lambda: interaction.messages and not interaction.messages[-1]["flags"] & 128)
    assert interaction.ephemeral(-1)
    return interaction.texts()[-1]


def review_channel(fake: FakeDiscord) -> str:
    return fake.channel_id("video-review")


async def turn_review_on(fake: FakeDiscord) -> str:
    options = {"channel": review_channel(fake)}
    return await answer(await fake.slash("quota-admin", options, sub="review", user="mod", types={"channel": 7}))


async def waiting_for_review(world: Harness) -> tuple[Any, dict[str, Any]]:
    """Start a video and wait until it sits in the review channel; returns the job and the review message."""
    fake = world.discord
    await fake.slash("video", {"prompt": "a dancing <@&1> robot", "duration": 5}, sub="text")
    await wait_until(lambda: fake.messages[review_channel(fake)])
    job = await world.job_in("succeeded")
    return job, fake.messages[review_channel(fake)][0]


def videos_in_thread(fake: FakeDiscord) -> list[dict[str, Any]]:
    [thread] = fake.threads()
    return [m for m in fake.messages[thread["id"]] if "your video is ready" in m["content"]]


async def test_a_finished_video_waits_in_the_review_channel_until_approved(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        assert "**review**: off → <#" in await turn_review_on(fake)
        job, review = await waiting_for_review(world)
        shown = dict(review)  # before the decision edits it
        await world.more_ticks(5)  # time for a delivery, which must not come
        assert videos_in_thread(fake) == []
        pending = await world.resources.jobs.get(job.id)
        assert (pending.status, pending.review_state) == ("succeeded", "pending")
        assert pending.review_message_id == int(review["id"])
        [thread] = fake.threads()
        assert fake.messages[thread["id"]][0]["content"].startswith("🔎 **Done**: a moderator reviews the video")
        status = await fake.slash("video", {}, sub="status")
        assert "done, waiting for a moderator's review" in await answer(status)
        approved = await fake.press(f"review:approve:{job.id}", review, user="mod")
        delivered = await world.job_in("delivered")
        await wait_until(lambda: videos_in_thread(fake) and approved.messages)
        [decision, _review_on] = await world.resources.credits.audit_entries(int(fake.guild_id))
    assert (decision.action, decision.moderator_id, decision.target_id, decision.source) == (
        "approve", int(fake.users["mod"]["id"]), int(fake.users["alice"]["id"]), "discord"
    )  # fmt: skip
    assert decision.after == f"video {job.id[:8]} approved"
    assert job.video_url in shown["content"] and shown["allowed_mentions"] == {"parse": []}
    assert shown["embeds"][0]["description"] == "a dancing <@&1> robot"
    assert [c["custom_id"] for c in shown["components"][0]["components"]] == [
        f"review:approve:{job.id}",
        f"review:reject:{job.id}",
    ]
    assert delivered.review_state == "approved"
    [video] = videos_in_thread(fake)
    assert video["files"] and video["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])]}
    edited = approved.messages[-1]
    assert edited["content"].endswith(f"✅ Approved by <@{fake.users['mod']['id']}>.") and edited["components"] == []


async def test_reject_tells_the_member_the_reason_and_the_credits_stay_spent(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        job, review = await waiting_for_review(world)
        shown = await fake.press(f"review:reject:{job.id}", review, user="mod")
        await wait_until(lambda: shown.modal is not None)
        done = await fake.submit_modal(shown, {"Reason (the member reads it)": "too *spooky* @everyone"}, user="mod")
        assert await answer(done) == "Rejected; the member is told your reason."
        rejected = await world.job_in("rejected")
        [thread] = fake.threads()
        await wait_until(lambda: any("not approved" in m["content"] for m in fake.messages[thread["id"]]))
        await wait_until(lambda: any("rejected in" in m["content"] for m in fake.messages[fake.log_channel]))
        await world.more_ticks(5)
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
        details = await answer(await fake.slash("video", {"job": job.id[:8]}, sub="status"))
        decision = (await world.resources.credits.audit_entries(int(fake.guild_id)))[0]
    assert (decision.action, decision.reason, decision.source) == ("reject", "too *spooky* @everyone", "discord")
    assert r"Rejected by a moderator: too \*spooky\* @everyone" in details and job.video_url not in details
    told = next(m for m in fake.messages[thread["id"]] if "not approved" in m["content"])
    assert r"too \*spooky\* @everyone" in told["content"] and "credits stay spent" in told["content"]
    assert told["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])]}
    assert videos_in_thread(fake) == [] and not any(m["files"] for m in fake.messages[thread["id"]])
    assert (rejected.review_state, rejected.review_reason) == ("rejected", "too *spooky* @everyone")
    assert (status.used, status.reserved) == (4000, 0)  # billed by the provider: not given back
    review = fake.messages[review_channel(fake)][0]
    assert "⛔ Rejected by" in review["content"] and review["components"] == []
    logged = [m["content"] for m in fake.messages[fake.log_channel]]
    assert any(f"rejected video `{job.id[:8]}`: too \\*spooky\\*" in line for line in logged), logged


async def test_only_moderators_may_approve_or_reject(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        job, review = await waiting_for_review(world)
        approve = await fake.press(f"review:approve:{job.id}", review, user="alice")
        reject = await fake.press(f"review:reject:{job.id}", review, user="bob")
        texts = [await answer(approve), await answer(reject)]
        await world.more_ticks(5)
        still = await world.resources.jobs.get(job.id)
    assert texts == ["Only moderators (Manage Server) can approve or reject videos."] * 2
    assert reject.modal is None
    assert (still.status, still.review_state) == ("succeeded", "pending") and videos_in_thread(fake) == []


async def test_the_buttons_work_after_a_restart_and_nothing_is_delivered_meanwhile(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        job, review = await waiting_for_review(world)
    async with world.running():  # a new process: no view state survives
        await world.more_ticks(5)
        assert videos_in_thread(fake) == [] and len(fake.messages[review_channel(fake)]) == 1
        stale = dict(review)  # as a second moderator's screen still shows it, buttons and all
        await fake.press(f"review:approve:{job.id}", review, user="mod")
        await world.job_in("delivered")
        await wait_until(lambda: videos_in_thread(fake))
        again = await fake.press(f"review:reject:{job.id}", stale, user="mod")
        assert "already decided" in await answer(again)
    assert len(videos_in_thread(fake)) == 1


async def test_review_off_sends_videos_straight_to_the_thread(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        text = await answer(await fake.slash("quota-admin", {}, sub="review", user="mod"))
        assert "→ off" in text
        await fake.slash("video", {"prompt": "no review"}, sub="text")
        job = await world.job_in("delivered")
    assert job.review_state is None and fake.messages[review_channel(fake)] == []


async def test_a_refused_review_post_keeps_the_video_from_the_member_and_is_tried_again(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        fake.fail_next(
            "POST", rf"/channels/{review_channel(fake)}/messages$", 403, 50013, "Missing Permissions", times=4
        )
        await fake.slash("video", {"prompt": "shy"}, sub="text")
        await wait_until(lambda: len(fake.posted("POST", rf"/channels/{review_channel(fake)}/messages$")) >= 4)
        await wait_until(lambda: fake.messages[review_channel(fake)])  # the fifth try gets through
        job = await world.job_in("succeeded")
        await world.more_ticks(3)
    assert videos_in_thread(fake) == [] and job.review_state == "pending"
    alerts = [m["content"] for m in fake.messages[fake.log_channel] if m["content"].startswith("⚠️")]
    assert len(alerts) == 1 and "waits for review" in alerts[0] and "403" in alerts[0]


async def decide(world: Harness, job_id: str, review: dict[str, Any]) -> Any:
    """Approve a video waiting for review; returns the job once delivered."""
    await world.discord.press(f"review:approve:{job_id}", review, user="mod")

    async def delivered() -> bool:
        job = await world.resources.jobs.get(job_id)
        return job is not None and job.status == "delivered"

    await wait_until(delivered)
    return await world.resources.jobs.get(job_id)


async def next_review(world: Harness, count: int) -> tuple[Any, dict[str, Any]]:
    """Wait until the review channel holds `count` messages; returns the newest one's job and message."""
    fake = world.discord
    await wait_until(lambda: len(fake.messages[review_channel(fake)]) >= count)
    review = fake.messages[review_channel(fake)][count - 1]
    job_id = review["components"][0]["components"][0]["custom_id"].rsplit(":", 1)[1]
    return await world.resources.jobs.get(job_id), review


def video_posts(fake: FakeDiscord) -> list[dict[str, Any]]:
    """Every post of a video file, in any channel (a segment's card carries its first frame, a picture)."""
    return [m for channel in fake.messages.values() for m in channel if any(n.endswith(".mp4") for n, _ in m["files"])]


async def test_a_continued_segment_and_its_re_roll_wait_for_review_too(world: Harness) -> None:
    fake = world.discord
    world.sim.task_videos = True
    async with world.running():
        await turn_review_on(fake)
        root, review = await waiting_for_review(world)
        root = await decide(world, root.id, review)
        thread = str(root.thread_id)
        shown = await fake.press(
            f"video:continue:{root.id}", fake.find_message(str(root.result_message_id)) | {"channel_id": thread}
        )
        await wait_until(lambda: shown.modal is not None)
        await fake.submit_modal(shown, {"Prompt (optional)": "it goes on", "Duration in seconds (3-15)": "3"})
        segment, review = await next_review(world, 2)
        await world.more_ticks(5)  # time for a delivery, which must not come
        held = await world.resources.jobs.get(segment.id)
        assert (held.parent_id, held.status, held.review_state) == (root.id, "succeeded", "pending")
        assert len(video_posts(fake)) == 1  # the root's video only
        segment = await decide(world, segment.id, review)
        await fake.press(
            f"video:reroll:{segment.id}", fake.find_message(str(segment.result_message_id)) | {"channel_id": thread}
        )
        take, _ = await next_review(world, 3)
        await world.more_ticks(5)
        again = await world.resources.jobs.get(take.id)
    assert (again.parent_id, again.status, again.review_state) == (root.id, "succeeded", "pending")
    assert len(video_posts(fake)) == 2  # the root and the approved segment; the re-roll waits


async def test_a_video_waiting_for_review_is_claimed_by_no_one(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        job, _ = await waiting_for_review(world)
        await wait_until(lambda: fake.messages[review_channel(fake)])
        jobs = world.resources.jobs

        async def recorded() -> bool:  # the card's id is written just after its post
            found = await jobs.get(job.id)
            return found is not None and found.review_message_id is not None and found.lease_owner is None

        await wait_until(recorded)
        waiting = await jobs.get(job.id)
        await world.more_ticks(10)  # every tick looks for videos to post
        later = await world.resources.jobs.get(job.id)
    assert waiting.review_message_id is not None and later.lease_owner is None
    assert later.lease_attempt == waiting.lease_attempt  # not claimed again, tick after tick


async def test_a_reject_form_sent_after_the_moderator_lost_manage_server_is_refused(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await turn_review_on(fake)
        job, review = await waiting_for_review(world)
        shown = await fake.press(f"review:reject:{job.id}", review, user="mod")
        await wait_until(lambda: shown.modal is not None)
        fake.member_roles["mod"] = []  # an admin takes the role away while the form is open
        done = await fake.submit_modal(shown, {"Reason (the member reads it)": "no"}, user="mod")
        text = await answer(done)
        await world.more_ticks(3)
        still = await world.resources.jobs.get(job.id)
    assert text == "Only moderators (Manage Server) can approve or reject videos."
    assert (still.status, still.review_state, still.review_reason) == ("succeeded", "pending", None)
    [thread] = fake.threads()
    assert not any("not approved" in m["content"] for m in fake.messages[thread["id"]])
