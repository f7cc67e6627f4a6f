"""Chains of videos: the last frame of a clip, joining clips (bot/media/clips.py), and the Continue and Join buttons
end to end through the fake Discord and the simulator, whose videos then end on a colour of their own per task."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageStat

from bot.core.model import Job
from bot.media import clips
from bot.provider.sim_videos import make_clip, sample_video, task_colour, task_video
from tests.fake_discord import Interaction, wait_until
from tests.harness import Harness, harness
from tests.join_gate import Gate, held, hold

TOLERANCE = 6  # per channel, after H.264 and JPEG


def mean_colour(image_bytes: bytes) -> tuple[float, ...]:
    with Image.open(io.BytesIO(image_bytes)) as image:
        return tuple(ImageStat.Stat(image.convert("RGB")).mean)


def close(colour: tuple[float, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= TOLERANCE for a, b in zip(colour, expected, strict=True))


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --- bot/media/clips.py --------------------------------------------------------------------------------------------


async def test_last_frame_is_the_final_frames_colour(tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"  # 6 s: the seek lands well before the end, so the tail is what is decoded
    long.write_bytes(make_clip([(200, 40, 60)] * 47 + [(30, 90, 210)], fps=8))
    assert close(mean_colour(await clips.last_frame(long)), (30, 90, 210))
    short = tmp_path / "short.mp4"
    short.write_bytes(task_video("901930004609634393"))
    frame = await clips.last_frame(short)
    assert close(mean_colour(frame), task_colour("901930004609634393"))
    with Image.open(io.BytesIO(frame)) as image:
        assert (image.format, image.size) == ("JPEG", (480, 320))


async def test_a_file_that_is_not_a_video_is_a_clip_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4096))
    with pytest.raises(clips.ClipError):
        await clips.last_frame(junk)


async def test_matching_segments_are_joined_by_copying_their_packets(tmp_path: Path) -> None:
    paths = []
    for n, seed in enumerate(("1", "22", "333")):
        paths.append(tmp_path / f"{n}.mp4")
        paths[-1].write_bytes(task_video(seed))
    out = tmp_path / "joined.mp4"
    assert (await clips.join(await clips.plan_join(paths), out)).how == "remux"
    lengths = [await clips.duration(p) for p in paths]
    assert await clips.duration(out) == pytest.approx(sum(lengths), abs=1e-3)
    # Not re-encoded: the joined video is the segments' packets, byte for byte, in order.
    assert video_packets(out) == [packet for p in paths for packet in video_packets(p)]
    assert decoded_frames(out) == 24
    assert close(mean_colour(await clips.last_frame(out)), task_colour("333"))


async def test_segments_with_sound_are_copied_with_their_sound(tmp_path: Path) -> None:
    sample = tmp_path / "sample.mp4"  # H.264 and AAC
    sample.write_bytes(sample_video())
    out = tmp_path / "twice.mp4"
    assert (await clips.join(await clips.plan_join([sample, sample]), out)).how == "remux"
    assert await clips.duration(out) == pytest.approx(2 * await clips.duration(sample), abs=1e-3)
    with av.open(str(out)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]


async def test_segments_that_differ_are_reencoded_to_h264(tmp_path: Path) -> None:
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    first.write_bytes(task_video("7"))  # 480x320
    second.write_bytes(make_clip([(10, 200, 30)] * 7 + [(220, 200, 40)], width=320, height=320, fps=8))
    out = tmp_path / "joined.mp4"
    assert (await clips.join(await clips.plan_join([first, second]), out)).how == "reencode"
    assert await clips.duration(out) == pytest.approx(await clips.duration(first) + await clips.duration(second))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 480, 320)
    assert decoded_frames(out) == 16
    assert video_packets(out) != video_packets(first) + video_packets(second)
    assert close(mean_colour(await clips.last_frame(out)), (220, 200, 40))


# --- Continue and Join through Discord -----------------------------------------------------------------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.sim.task_videos = True
        yield running


def buttons(message: dict[str, Any]) -> list[list[tuple[str, str]]]:
    return [[(c["custom_id"], c["label"]) for c in row["components"]] for row in message["components"]]


def video_message(world: Harness, channel: str, job: Job) -> dict[str, Any]:
    return world.discord.find_message(str(job.result_message_id)) | {"channel_id": channel}


async def delivered(world: Harness, user: str, count: int) -> list[Job]:
    """Wait until `user` has `count` delivered jobs; returns them oldest first."""
    found: list[Job] = []

    async def ready() -> bool:
        user_id = int(world.discord.users[user]["id"])
        jobs = await world.resources.jobs.member_jobs(int(world.discord.guild_id), user_id, limit=50)
        found[:] = [j for j in reversed(jobs) if j.status == "delivered"]
        return len(found) >= count

    await wait_until(ready)
    return found


async def used_credits(world: Harness, user: str) -> int:
    status = await world.resources.credits.status(int(world.discord.guild_id), int(world.discord.users[user]["id"]), ())
    return status.used + status.reserved


async def answered(interaction: Interaction) -> str:
    await wait_until(lambda: interaction.messages and not interaction.messages[-1]["flags"] & 128)
    return interaction.texts()[-1]


def submit_of(world: Harness, job: Job) -> Any:
    """The submit request the simulator received for this job (its external id is the job's id)."""
    posts = [r for r in world.sim.requests if r.method == "POST"]
    return next(r for r in posts if r.json["options"]["external_task_id"] == job.id)


def bob_jobs(world: Harness) -> Any:
    return world.resources.jobs.member_jobs(int(world.discord.guild_id), int(world.discord.users["bob"]["id"]))


async def continue_video(world: Harness, parent: Job, values: dict[str, str], *, user: str) -> Interaction:
    thread = str(parent.thread_id or parent.channel_id)
    shown = await world.discord.press(f"video:continue:{parent.id}", video_message(world, thread, parent), user=user)
    await wait_until(lambda: shown.modal is not None)
    return await world.discord.submit_modal(shown, values, user=user)


async def test_continue_starts_the_next_segment_from_the_last_frame_in_the_same_thread(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a red fox in snow"}, sub="text")
        [parent] = await delivered(world, "alice", 1)
        [thread] = fake.threads()
        video = fake.messages[thread["id"]][-1]
        assert buttons(video) == [
            [
                (f"video:reroll:{parent.id}", "Re-roll · 4 credits"),
                (f"video:edit:{parent.id}", "Edit · 4 credits"),
                (f"video:delete:{parent.id}", "Delete"),
            ],
            [(f"video:continue:{parent.id}", "Continue · 4 credits")],  # no Join: it continues nothing
        ]
        submitted = await continue_video(
            world, parent, {"Prompt (optional)": "the fox jumps", "Duration in seconds (3-15)": "3"}, user="bob"
        )
        [child] = await delivered(world, "bob", 1)
        charged = await used_credits(world, "bob")
    assert "on its way" in submitted.texts()[-1]
    assert (child.parent_id, child.kind, child.prompt, child.duration) == (parent.id, "image", "the fox jumps", 3)
    # The first frame the provider received is the parent video's last frame, not its first.
    first_frame = base64.b64decode(submit_of(world, child).json["contents"][0]["url"])
    assert parent.provider_task_id is not None
    assert close(mean_colour(first_frame), task_colour(parent.provider_task_id))
    # The next segment lives in the parent's thread: its card and its video are posted there, no new thread.
    assert fake.threads() == [thread]
    assert child.channel_id == int(thread["id"]) and child.thread_id is None
    posted = [m["id"] for m in fake.messages[thread["id"]]]
    assert str(child.message_id) in posted and str(child.result_message_id) in posted
    assert charged == 2400  # 3 s at 720p, once, to whoever pressed it
    join_row = buttons(fake.find_message(str(child.result_message_id)))[1]
    assert join_row == [(f"video:continue:{child.id}", "Continue · 4 credits"), (f"video:join:{child.id}", "Join")]


async def test_a_continue_over_the_quota_is_refused_and_charges_nothing(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides = {"default_quota_credits": 3}  # a 5 s continuation costs 4
    async with world.running():
        await fake.slash("video", {"prompt": "a lighthouse", "duration": 3}, sub="text")
        [parent] = await delivered(world, "alice", 1)
        answer = await answered(await continue_video(world, parent, {"Prompt (optional)": "night falls"}, user="bob"))
        assert await used_credits(world, "bob") == 0
        assert await bob_jobs(world) == []
    assert "Nothing was charged" in answer
    assert len([r for r in world.sim.requests if r.method == "POST"]) == 1


async def test_continue_when_the_video_is_gone_says_so(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a kite"}, sub="text")
        [parent] = await delivered(world, "alice", 1)
        world.sim.video_fault = "404"  # the provider's link expired
        answer = await answered(await continue_video(world, parent, {}, user="bob"))
        assert await bob_jobs(world) == []
    assert "can no longer be downloaded" in answer and "Nothing was sent or charged" in answer


async def make_chain(world: Harness) -> tuple[Job, Job, dict[str, Any]]:
    """A video and its continuation, both delivered; returns them and the thread."""
    await world.discord.slash("video", {"prompt": "a paper boat", "duration": 3}, sub="text")
    [root] = await delivered(world, "alice", 1)
    await continue_video(
        world, root, {"Prompt (optional)": "it sails on", "Duration in seconds (3-15)": "4"}, user="alice"
    )
    _, child = await delivered(world, "alice", 2)
    [thread] = world.discord.threads()
    return root, child, thread


async def test_join_posts_the_chain_as_one_video_and_charges_nothing(world: Harness, tmp_path: Path) -> None:
    fake = world.discord
    async with world.running():
        root, child, thread = await make_chain(world)
        before = await used_credits(world, "alice")
    posts = len(fake.messages[thread["id"]])
    async with world.running():  # the button works after a restart
        pressed = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child), user="bob")
        answer = await answered(pressed)
        after = await used_credits(world, "alice"), await used_credits(world, "bob")
    assert "Joined 2 segments" in answer and pressed.ephemeral()
    [joined] = fake.messages[thread["id"]][posts:]
    [(name, data)] = joined["files"]
    assert name == f"joined-{root.id[:8]}.mp4" and f"`{root.id[:8]}`" in joined["content"]
    segments = []
    for job in (root, child):
        assert job.provider_task_id is not None
        segments.append(tmp_path / f"{job.id}.mp4")
        segments[-1].write_bytes(task_video(job.provider_task_id))  # what the simulator served for it
    out = tmp_path / "joined.mp4"
    out.write_bytes(data)
    assert await clips.duration(out) == pytest.approx(sum([await clips.duration(p) for p in segments]), abs=1e-3)
    assert close(mean_colour(await clips.last_frame(out)), task_colour(child.provider_task_id))
    assert after == (before, 0)


async def test_a_joined_video_over_the_upload_limit_is_not_posted(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        root, child, thread = await make_chain(world)
        posts = len(fake.messages[thread["id"]])
        segment = len(task_video(child.provider_task_id or ""))
        fake.filesize_limit = segment + 1000  # each segment fits, the two together do not
        pressed = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child))
        answer = await answered(pressed)
    assert "larger than this server's upload limit" in answer and "the segments stay as they are" in answer
    assert len(fake.messages[thread["id"]]) == posts
    assert not [r for r in fake.posted("POST") if any(name == f"joined-{root.id[:8]}.mp4" for name, _ in r.files)]


async def test_join_with_a_segment_that_can_no_longer_be_fetched_says_which(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        root, child, thread = await make_chain(world)
        posts = len(fake.messages[thread["id"]])
        world.sim.video_fault = "404"
        answer = await answered(await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child)))
    assert f"Segment 1 (`{root.id[:8]}`) can no longer be downloaded" in answer
    assert len(fake.messages[thread["id"]]) == posts


async def test_history_shows_each_segment_of_a_chain(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        root, child, _ = await make_chain(world)
        text = await answered(await fake.slash("video", {}, sub="history"))
    lines = text.splitlines()
    assert any(f"`{child.id[:8]}`" in line and f"segment 2 of `{root.id[:8]}`" in line for line in lines)
    assert not any(
        f"`{root.id[:8]}`" in line and "segment" in line for line in lines if f"`{child.id[:8]}`" not in line
    )


async def test_segments_that_are_not_videos_are_not_joined_nor_continued(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        _, child, thread = await make_chain(world)
        posts = len(fake.messages[thread["id"]])
        world.sim.video_bytes = b"\x00\x00\x00\x18ftypmp42" + bytes(4096)  # the provider now serves junk
        joined = await answered(await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child)))
        continued = await answered(await continue_video(world, child, {}, user="bob"))
        assert await bob_jobs(world) == []
    assert "could not be joined" in joined and len(fake.messages[thread["id"]]) == posts
    assert "could not be read" in continued and "Nothing was sent or charged" in continued


# --- Join's limits: its own workers, one per chain, a cooldown, a frame cap and a size estimate ---------------------


def noisy_clip(width: int, height: int, frames: int = 8, fps: int = 8) -> bytes:
    """Frames of noise: the most bits a second an encoder needs at this size."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = Image.effect_noise((width, height), 90).convert("RGB")
            for packet in stream.encode(av.VideoFrame.from_image(image).reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def square_clip(task_id: str) -> bytes:
    """A task's clip at 320x320 (the simulator's are 480x320), its last frame of the task's colour."""
    return make_clip([(10, 200, 30)] * 7 + [task_colour(task_id)], width=320, height=320, fps=8)


def clips_in_order(world: Harness, *makers: Any) -> None:
    """The simulator's tasks get their clips from `makers`, one each in the order their videos are first fetched."""
    order: list[str] = []

    def make(task_id: str) -> bytes:
        order.append(task_id)
        return bytes(makers[min(len(order), len(makers)) - 1](task_id))

    world.sim.clip_maker = make


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Re-encodes (in the join processes, or in this one) wait until `gate.open()`; opened at the end in any case."""
    held_here = Gate(tmp_path / "gate")
    monkeypatch.setattr(clips, "child_setup", (hold, (str(held_here.folder),)))
    monkeypatch.setattr(clips, "_reencode", held(clips._reencode, str(held_here.folder)))
    yield held_here
    held_here.open()


def is_answered(interaction: Interaction) -> bool:
    return bool(interaction.messages) and not interaction.messages[-1]["flags"] & 128


def pending(interaction: Interaction) -> bool:
    """Still "thinking": nothing answered yet."""
    return bool(interaction.messages) and bool(interaction.messages[-1]["flags"] & 128)


def joined_posts(world: Harness, root: Job) -> list[Any]:
    return [r for r in world.discord.posted("POST") if any(n == f"joined-{root.id[:8]}.mp4" for n, _ in r.files)]


async def test_a_continue_gets_its_last_frame_while_a_reencoding_join_runs(world: Harness, gate: Gate) -> None:
    fake = world.discord
    clips_in_order(world, lambda task_id: task_video(task_id), square_clip)  # they differ: Join re-encodes
    async with world.running():
        root, child, thread = await make_chain(world)
        try:
            join = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child), user="alice")
            await wait_until(gate.starts)
            continued = await continue_video(world, child, {"Prompt (optional)": "on and on"}, user="bob")
            answer = await answered(continued)
            assert pending(join) and not joined_posts(world, root)  # the re-encode still waits at the gate
        finally:
            gate.open()
        joined = await answered(join)
        [bobs] = await bob_jobs(world)
    assert "on its way" in answer and bobs.parent_id == child.id
    assert "Joined 2 segments" in joined and len(joined_posts(world, root)) == 1
    [pid] = gate.starts()
    assert pid != os.getpid()  # the re-encode ran in a process of its own


async def test_a_reencode_spends_its_cpu_in_a_join_process_not_the_bots(tmp_path: Path) -> None:
    warm_up = [tmp_path / "w.mp4", tmp_path / "w.mp4"]
    warm_up[0].write_bytes(task_video("1"))
    await clips.join(await clips.plan_join(warm_up), tmp_path / "w2.mp4")  # the join process is started
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    paths[0].write_bytes(noisy_clip(320, 240, frames=40))
    paths[1].write_bytes(noisy_clip(240, 240, frames=40))
    plan = await clips.plan_join(paths)
    ticks = 0
    running = asyncio.create_task(clips.join(plan, tmp_path / "joined.mp4", threads=1))

    async def beat() -> None:
        nonlocal ticks
        while not running.done():
            ticks += 1
            await asyncio.sleep(0.01)  # often enough to count, seldom enough to cost little CPU

    cpu_before = time.process_time()
    await asyncio.gather(running, beat())
    cpu_here = time.process_time() - cpu_before
    joined = running.result()
    assert (plan.how, joined.how, decoded_frames(tmp_path / "joined.mp4")) == ("reencode", "reencode", 80)
    assert joined.cpu_seconds > 0.2 and ticks > 5  # real work was done, and the loop went on meanwhile
    assert cpu_here < joined.cpu_seconds / 3  # ... with the CPU of another process


async def test_a_reencode_stays_within_its_estimated_size(tmp_path: Path) -> None:
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"]
    paths[0].write_bytes(make_clip([(200, 40, 60)] * 16, width=480, height=320))
    paths[1].write_bytes(noisy_clip(320, 320, frames=16))
    paths[2].write_bytes(task_video("3"))
    plan = await clips.plan_join(paths)
    joined = await clips.join(plan, tmp_path / "joined.mp4")
    size = (tmp_path / "joined.mp4").stat().st_size
    assert (plan.how, plan.frames, plan.seconds) == ("reencode", 40, pytest.approx(joined.seconds, abs=0.01))
    # The noisy segment's bits a pixel, for every segment at 480x320: far more than the segments' sum, never less.
    assert sum(p.stat().st_size for p in paths) < plan.estimated_bytes and size <= plan.estimated_bytes


async def test_a_second_join_of_a_chain_being_joined_is_told_so_and_downloads_nothing(
    world: Harness, gate: Gate
) -> None:
    fake = world.discord
    clips_in_order(world, lambda task_id: task_video(task_id), square_clip)
    async with world.running():
        root, child, thread = await make_chain(world)
        try:
            first = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child), user="alice")
            await wait_until(gate.starts)
            fetched = len(world.sim.video_requests)
            second = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child), user="bob")
            await wait_until(lambda: is_answered(second) or len(world.sim.video_requests) > fetched)
            assert len(world.sim.video_requests) == fetched and pending(first)
            told = await answered(second)
        finally:
            gate.open()
        done = await answered(first)
    assert "is being made; it will be posted here" in told and second.ephemeral()
    assert "Joined 2 segments" in done and len(joined_posts(world, root)) == 1 and len(gate.starts()) == 1


async def test_a_member_joins_again_only_after_the_cooldown_and_is_told_when(world: Harness) -> None:
    fake = world.discord
    world.settings_overrides = {"join_cooldown_seconds": 600}
    async with world.running():
        root, child, thread = await make_chain(world)
        message = video_message(world, thread["id"], child)
        assert "Joined 2 segments" in await answered(await fake.press(f"video:join:{child.id}", message, user="bob"))
        fetched = len(world.sim.video_requests)
        again = await answered(await fake.press(f"video:join:{child.id}", message, user="bob"))
        assert len(world.sim.video_requests) == fetched  # refused before downloading anything
        other = await answered(await fake.press(f"video:join:{child.id}", message, user="alice"))
    assert "one Join every 600 s; you can press Join again <t:" in again
    when = int(again.split("<t:")[1].split(":R>")[0])
    assert time.time() + 590 < when <= time.time() + 602
    assert "Joined 2 segments" in other and len(joined_posts(world, root)) == 2  # the cooldown is each member's


async def test_a_join_over_the_frame_cap_is_refused_before_any_encode(world: Harness, gate: Gate) -> None:
    fake = world.discord
    gate.open()  # re-encodes go straight on, and are counted
    world.settings_overrides = {"join_max_frames": 15}
    clips_in_order(world, lambda task_id: task_video(task_id), square_clip)  # 8 + 8 frames, to re-encode
    async with world.running():
        root, child, thread = await make_chain(world)
        pressed = await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child))
        answer = await answered(pressed)
    assert "re-encoding 16 frames, more than the 15 allowed here; nothing was joined" in answer
    assert gate.starts() == [] and joined_posts(world, root) == []


async def test_a_join_estimated_over_the_upload_limit_is_refused_before_any_encode(
    world: Harness, gate: Gate, tmp_path: Path
) -> None:
    fake = world.discord
    gate.open()
    clips_in_order(world, lambda task_id: task_video(task_id), lambda task_id: noisy_clip(320, 320))
    async with world.running():
        root, child, thread = await make_chain(world)
        segments = []
        for number, job in enumerate((root, child)):
            segments.append(tmp_path / f"{number}.mp4")
            segments[-1].write_bytes(await fetch(world, job))
        fake.filesize_limit = sum(p.stat().st_size for p in segments) + 1000  # both segments fit, downloaded
        assert (await clips.plan_join(segments)).estimated_bytes > fake.filesize_limit
        answer = await answered(await fake.press(f"video:join:{child.id}", video_message(world, thread["id"], child)))
    assert "larger than this server's upload limit" in answer and "the segments stay as they are" in answer
    assert gate.starts() == [] and joined_posts(world, root) == []


async def fetch(world: Harness, job: Job) -> bytes:
    """The video the simulator serves for a job."""
    assert job.video_url is not None
    async with world.resources.session.get(job.video_url) as response:
        return await response.read()


async def test_a_continue_form_sent_twice_at_once_makes_one_segment_charged_once(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "a red fox in snow"}, sub="text")
        [parent] = await delivered(world, "alice", 1)
        thread = str(parent.thread_id)
        shown = await fake.press(f"video:continue:{parent.id}", video_message(world, thread, parent), user="bob")
        await wait_until(lambda: shown.modal is not None)
        values = {"Prompt (optional)": "the fox jumps", "Duration in seconds (3-15)": "3"}
        sent = await asyncio.gather(*(fake.submit_modal(shown, values, user="bob") for _ in range(2)))
        await wait_until(lambda: all(s.callbacks for s in sent) or len(world.sim.tasks) > 2)
        await delivered(world, "bob", 1)
        await world.more_ticks(5)  # a second segment, if any, would be written and sent by now
        assert len(await bob_jobs(world)) == 1 and len(world.sim.tasks) == 2
        assert await used_credits(world, "bob") == 2400
    texts = sorted(s.texts()[-1] for s in sent)
    assert "already confirmed" in texts[0] and "on its way" in texts[1]
