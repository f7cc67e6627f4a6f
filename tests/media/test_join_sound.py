"""Join keeps sound: one audio track lasting the sum of the segments (copied when they match, re-encoded to AAC
otherwise, a silent segment contributing silence); the simulator serves clips with sound, as turbo's videos are."""

from __future__ import annotations

import array
import io
import math
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import av
import pytest

from bot.core.options import JobOptions
from bot.media import clips
from bot.provider.kling import KlingClient
from bot.provider.sim_videos import make_clip, silent_task_video, task_colour, task_video
from bot.provider.simulator import KlingSimulator
from tests.media.test_clips import close, mean_colour

FRAME = 1 / 8  # the clips' frame length: durations agree within a frame


@pytest.fixture(autouse=True)
def join_processes() -> Iterator[None]:
    clips.start_joins(1)
    yield
    clips.stop_joins()


def audio_of(path: Path | bytes) -> tuple[list[str], float, array.array[int]]:
    """The audio streams' codecs, the first one's length in seconds and its samples (16-bit mono, 48 kHz)."""
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with av.open(source) as container:
        codecs = [s.codec_context.name for s in container.streams.audio]
        samples: array.array[int] = array.array("h")
        if not codecs:
            return codecs, 0.0, samples
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in container.decode(container.streams.audio[0]):
            for out in [*resampler.resample(frame)]:
                samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
        for out in resampler.resample(None):
            samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
    return codecs, len(samples) / 48000, samples


def loudness(samples: array.array[int], start: float, end: float) -> float:
    part = samples[round(start * 48000) : round(end * 48000)]
    return math.sqrt(sum(v * v for v in part) / max(1, len(part)))


def write(folder: Path, *videos: bytes) -> list[Path]:
    paths = []
    for number, data in enumerate(videos):
        paths.append(folder / f"{number}.mp4")
        paths[-1].write_bytes(data)
    return paths


async def joined(paths: list[Path], out: Path) -> clips.JoinPlan:
    plan = await clips.plan_join(paths)
    await clips.join(plan, out)
    return plan


async def test_segments_with_sound_are_copied_with_one_audio_track_lasting_their_sum(tmp_path: Path) -> None:
    paths = write(tmp_path, task_video("1"), task_video("2"), task_video("3"))
    out = tmp_path / "joined.mp4"
    plan = await joined(paths, out)
    codecs, seconds, samples = audio_of(out)
    assert plan.how == "remux" and plan.sound
    assert codecs == ["aac"]
    assert seconds == pytest.approx(3.0, abs=FRAME) and await clips.duration(out) == pytest.approx(3.0, abs=FRAME)
    assert loudness(samples, 0.2, 2.8) > 1000  # the tone, all along


async def test_a_re_encoded_join_has_one_aac_track_and_a_silent_segment_is_silence(tmp_path: Path) -> None:
    square = make_clip([(10, 200, 30)] * 8, width=320, height=320, tone=660.0)  # another size: re-encoded
    paths = write(tmp_path, task_video("1"), silent_task_video("2"), square)
    out = tmp_path / "joined.mp4"
    plan = await joined(paths, out)
    codecs, seconds, samples = audio_of(out)
    assert plan.how == "reencode" and plan.sound
    assert codecs == ["aac"]
    assert seconds == pytest.approx(3.0, abs=FRAME) and await clips.duration(out) == pytest.approx(3.0, abs=FRAME)
    assert loudness(samples, 0.1, 0.9) > 1000
    assert loudness(samples, 1.1, 1.9) < 50  # the silent segment's second
    assert loudness(samples, 2.1, 2.9) > 1000
    # A silent segment last: its silence still lasts its length.
    ends_silent = tmp_path / "ends-silent.mp4"
    await joined([paths[2], paths[1]], ends_silent)
    codecs, seconds, samples = audio_of(ends_silent)
    assert codecs == ["aac"] and seconds == pytest.approx(2.0, abs=FRAME)
    assert loudness(samples, 1.1, 1.9) < 50


async def test_silent_segments_join_without_a_track_and_the_last_frame_is_unchanged(tmp_path: Path) -> None:
    paths = write(tmp_path, silent_task_video("1"), silent_task_video("2"))
    out = tmp_path / "joined.mp4"
    plan = await joined(paths, out)
    assert not plan.sound and audio_of(out)[0] == []
    # Continue's first frame is the video's last one, sound or not.
    assert close(mean_colour(await clips.last_frame(write(tmp_path, task_video("9"))[0])), task_colour("9"))


@pytest.mark.parametrize(("sound", "codecs"), [("on", ["aac"]), (None, ["aac"]), ("off", [])])
async def test_the_simulator_serves_sound_unless_asked_for_none(
    sim: KlingSimulator, kling: KlingClient, session: aiohttp.ClientSession, sound: str | None, codecs: list[str]
) -> None:
    sim.task_videos = True
    task = await kling.submit_text("a fox", options=JobOptions.of("text", {"sound": sound}), external_task_id="x")
    sim.finish(task.id)
    [done] = await kling.query([task.id])
    assert done.video is not None
    async with session.get(done.video.url) as response:
        data = await response.read()
    assert audio_of(data)[0] == codecs
