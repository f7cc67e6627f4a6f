"""The videos the simulator serves: the sample mp4, or a small clip per task whose last frame has its own colour,
with an AAC track (a tone) as turbo's videos have sound, or silent when the submit asked for none."""

from __future__ import annotations

import array
import hashlib
import io
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import av
from PIL import Image

SAMPLE_RATE = 48000
AUDIO_FRAME = 1024  # samples per AAC frame
TONE_HZ = 440.0


def task_colour(seed: str) -> tuple[int, int, int]:
    """The colour of the last frame of the simulator's video for this task id (mid-range, so YUV keeps it)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return (40 + digest[0] % 176, 40 + digest[1] % 176, 40 + digest[2] % 176)


def make_clip(
    colours: Sequence[tuple[int, int, int]],
    *,
    width: int = 480,
    height: int = 320,
    fps: int = 8,
    sound: bool = True,
    tone: float = TONE_HZ,
) -> bytes:
    """A small H.264 mp4 with one plain frame per colour, at `fps` frames a second; with `sound`, an AAC track (a
    sine of `tone` Hz, mono, 48 kHz) as long as the video."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if sound else None
        for colour in colours:
            frame = av.VideoFrame.from_image(Image.new("RGB", (width, height), colour))  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio is not None:
            _add_tone(container, audio, round(len(colours) / fps * SAMPLE_RATE), tone)
    return out.getvalue()


def _add_tone(container: Any, stream: Any, samples: int, tone: float) -> None:
    """`samples` of a quiet sine (16-bit; the encoder resamples and frames it), then the encoder's rest."""
    for start in range(0, samples, AUDIO_FRAME):
        count = min(AUDIO_FRAME, samples - start)
        wave = array.array("h", (round(6000 * math.sin(2 * math.pi * tone * n / SAMPLE_RATE))
                                 for n in range(start, start + count)))  # fmt: skip
        frame = av.AudioFrame(format="s16", layout="mono", samples=count)
        frame.planes[0].update(wave.tobytes())
        frame.sample_rate, frame.pts = SAMPLE_RATE, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def task_video(seed: str) -> bytes:
    """The simulator's video for one task (`task_videos`): one second at 480x320 whose final frame has
    `task_colour(seed)` and every frame before it a colour 88 away in each channel, so a first frame is never
    mistaken for a last."""
    last = task_colour(seed)
    before = (_away(last[0]), _away(last[1]), _away(last[2]))
    return make_clip([before] * 7 + [last])


def silent_task_video(seed: str) -> bytes:
    """`task_video` without its audio track (a submit that asked for `"audio": "off"`)."""
    last = task_colour(seed)
    before = (_away(last[0]), _away(last[1]), _away(last[2]))
    return make_clip([before] * 7 + [last], sound=False)


def _away(channel: int) -> int:
    return channel + 88 if channel < 128 else channel - 88


def sample_video() -> bytes:
    """The small real mp4 the simulator serves (3 s, 320x180, H.264 and AAC)."""
    return (resources.files("bot") / "assets" / "sample.mp4").read_bytes()
