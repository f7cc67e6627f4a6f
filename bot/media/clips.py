"""Video segments with PyAV: the last frame of a clip (to continue it) and a chain of clips joined into one.

Each kind of work has a worker of its own, so none waits behind another: last frames (a Continue) on one thread,
the headers of a join's segments on another, and the joins themselves in processes of their own (`start_joins`),
where a re-encode uses its cores without holding the bot's event loop or its GIL. A join process is given plain
paths and numbers and gives back a `Joined`: nothing of the bot crosses over.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
from av.container import InputContainer

log = logging.getLogger(__name__)

TAIL_SECONDS = 2.0  # the last frame is decoded from the keyframe before this much of the end
JPEG_QUALITY = 95
ENCODE_TIME_BASE = Fraction(1, 90000)  # re-encoded frames keep their own times, whatever each segment's rate
MP4_OPTIONS = {"movflags": "+faststart"}  # the index first, so Discord can play the video while it loads
ENCODE_PRESET = "veryfast"  # a join takes ~40% less CPU than with x264's default; the bit rate is set
MUX_OVERHEAD = 0.03  # an mp4's index and headers, on top of its bit rate (estimates are upper bounds)
MUX_BYTES = 64 * 1024
AUDIO_BIT_RATE = 128_000  # a re-encoded join's AAC track
AUDIO_CHUNK = 1024  # samples handed to the AAC encoder at a time
DEFAULT_AUDIO = (48000, "mono")  # the track's rate and layout when no segment says otherwise
_frames = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips-frames")  # a Continue never waits on a join
_headers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips-headers")
_joins: ProcessPoolExecutor | None = None
_join_processes = 1
# Run by each join process as it starts; the tests hold a re-encode there with it.
child_setup: tuple[Callable[..., object], tuple[Any, ...]] | None = None


class ClipError(ValueError):
    """The file is not a video PyAV can read (no video stream, truncated, corrupt)."""


@dataclass(frozen=True)
class JoinPlan:
    """How a chain would be joined, read from its segments' headers before any work: the frames a re-encode would
    decode and encode, and about how large the joined file would be."""

    paths: tuple[Path, ...]
    how: Literal["remux", "reencode"]
    frames: int
    seconds: float
    estimated_bytes: int
    bit_rate: int  # the re-encode's target in bits a second (0 for a remux)
    sound: bool = False  # some segment has an audio track: the joined video has one


@dataclass(frozen=True)
class Joined:
    """What a join process made: how, the video's length in seconds, and the CPU seconds it spent."""

    how: Literal["remux", "reencode"]
    seconds: float
    cpu_seconds: float


def start_joins(processes: int = 1) -> ProcessPoolExecutor:
    """(Re)start the join processes: at most `processes` joins run at once, the others wait their turn."""
    global _joins, _join_processes
    stop_joins()
    _join_processes = processes
    # spawn: a fresh interpreter, not a fork of a process with an event loop and threads running.
    setup, args = child_setup or (None, ())
    _joins = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=setup, initargs=args
    )
    return _joins


def stop_joins() -> None:
    """Stop the join processes, a join in progress with them (it costs no one anything)."""
    global _joins
    pool, _joins = _joins, None
    if pool is None:
        return
    running = list((pool._processes or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in running:
        process.terminate()


def _join_pool() -> ProcessPoolExecutor:
    return _joins or start_joins(_join_processes)


async def _in_worker(worker: Executor, function: Any, *args: Any) -> Any:
    try:
        return await asyncio.get_running_loop().run_in_executor(worker, function, *args)
    except av.FFmpegError as exc:  # a file that opened but breaks while read (truncated, corrupt)
        raise ClipError(f"the video could not be read: {exc}") from None


async def last_frame(path: Path) -> bytes:
    """The final decoded frame of the video as a JPEG (a first frame for an image-to-video job)."""
    data: bytes = await _in_worker(_frames, _last_frame, path)
    return data


async def duration(path: Path) -> float:
    """The video's length in seconds (from its first timestamp to the end of its last packet)."""
    seconds: float = await _in_worker(_headers, _duration, path)
    return seconds


async def plan_join(paths: Sequence[Path]) -> JoinPlan:
    """How the segments would be joined (see `JoinPlan`), from their headers only."""
    plan: JoinPlan = await _in_worker(_headers, _plan, tuple(paths))
    return plan


async def join(plan: JoinPlan, out_path: Path, *, threads: int = 2) -> Joined:
    """Write the plan's segments one after the other into `out_path`, in a join process: packets copied as they
    are when every segment has the same streams (codec, size, time base, codec set-up), else the video re-encoded
    to H.264 with `threads` encoder threads."""
    pool = _join_pool()
    try:
        joined: Joined = await _in_worker(pool, _join_in_process, plan, out_path, threads)
    except BrokenProcessPool:  # a join process died (or was stopped): the next join gets new ones
        if _joins is pool:
            start_joins(_join_processes)
        raise ClipError("the join process stopped") from None
    return joined


# --- the work, in the workers --------------------------------------------------------------------------------------


def _open(path: Path) -> InputContainer:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ClipError(f"not a readable video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise ClipError("the file has no video stream")
    return container


def _last_frame(path: Path) -> bytes:
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frame = None
        end = _stream_end(stream, container)
        if end is not None and stream.time_base:
            # Seek to the keyframe before the tail, then decode only the tail.
            target = int((end - TAIL_SECONDS) / stream.time_base)
            if target > 0:
                try:
                    container.seek(target, stream=stream, backward=True)
                    frame = _final_frame(container, stream)
                except av.FFmpegError:
                    frame = None
        if frame is None:  # no known length, or the seek found nothing: decode it all
            container.seek(0, stream=stream)
            frame = _final_frame(container, stream)
        if frame is None:
            raise ClipError("the video has no frames")
        out = io.BytesIO()
        frame.to_image().convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def _final_frame(container: InputContainer, stream: Any) -> Any:
    last = None
    for frame in container.decode(stream):
        last = frame
    return last


def _stream_end(stream: Any, container: InputContainer) -> float | None:
    """Where the stream ends in seconds, from its header or the container's."""
    if stream.duration is not None and stream.time_base:
        return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


@dataclass(frozen=True)
class _Segment:
    path: Path
    shape: tuple[Any, ...]  # what must match for packets to be copied
    start: float  # seconds
    length: float  # seconds


def _probe(path: Path) -> _Segment:
    """A segment's stream set-up and its extent, read from its packets (no decoding)."""
    with _open(path) as container:
        shape = tuple(_stream_shape(s) for s in container.streams if s.type in ("video", "audio"))
        first: float | None = None
        end = 0.0
        for packet in container.demux(*[s for s in container.streams if s.type in ("video", "audio")]):
            if packet.pts is None or packet.time_base is None:
                continue
            at = float(packet.pts * packet.time_base)
            if packet.stream.type == "video":  # the video starts a segment: an AAC track's priming starts before it
                first = at if first is None else min(first, at)
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    if first is None:
        raise ClipError(f"{path.name} has no packets")
    return _Segment(path, shape, first, end - first)


def _stream_shape(stream: Any) -> tuple[Any, ...]:
    context = stream.codec_context
    common = (stream.type, context.name, stream.time_base, bytes(context.extradata or b""))
    if stream.type == "video":
        return (*common, context.width, context.height, context.pix_fmt)
    return (*common, context.sample_rate, context.channels)


def _duration(path: Path) -> float:
    return _probe(path).length


@dataclass(frozen=True)
class _Header:
    shape: tuple[Any, ...]
    seconds: float
    frames: int
    bit_rate: int  # the video's, bits a second
    width: int
    height: int
    sound: bool


def _header(path: Path) -> _Header:
    """A segment as its headers describe it (nothing decoded)."""
    with _open(path) as container:
        shape = tuple(_stream_shape(s) for s in container.streams if s.type in ("video", "audio"))
        video = container.streams.video[0]
        if video.duration is not None and video.time_base:
            seconds = float(video.duration * video.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:  # no length in the headers: read it from the packets
            seconds = _probe(path).length
        frames = video.frames or round(seconds * float(video.average_rate or 24))
        bit_rate = video.bit_rate or (round(path.stat().st_size * 8 / seconds) if seconds else 0)
        width, height = video.codec_context.width, video.codec_context.height
        sound = bool(container.streams.audio)
    return _Header(shape, seconds, frames, bit_rate, width, height, sound)


def _plan(paths: tuple[Path, ...]) -> JoinPlan:
    if not paths:
        raise ClipError("nothing to join")
    heads = [_header(path) for path in paths]
    seconds, frames = sum(h.seconds for h in heads), sum(h.frames for h in heads)
    sound = any(head.sound for head in heads)
    if all(head.shape == heads[0].shape for head in heads):
        return JoinPlan(paths, "remux", frames, seconds, sum(p.stat().st_size for p in paths), 0, sound)
    width, height = _even(heads[0].width, heads[0].height)
    # As many bits a pixel as the densest segment, at the joined video's size: no segment loses its quality.
    bit_rate = max(round(h.bit_rate * width * height / max(1, h.width * h.height)) for h in heads)
    total_rate = bit_rate + (AUDIO_BIT_RATE if sound else 0)
    estimated = round(total_rate * seconds / 8 * (1 + MUX_OVERHEAD)) + MUX_BYTES
    return JoinPlan(paths, "reencode", frames, seconds, estimated, bit_rate, sound)


def _even(width: int, height: int) -> tuple[int, int]:
    """A re-encode's sides: yuv420p needs even ones."""
    return width - width % 2, height - height % 2


def _join_in_process(plan: JoinPlan, out_path: Path, threads: int) -> Joined:
    """A join process's work; its errors come back as ClipError (FFmpeg's own do not cross processes)."""
    started = time.process_time()
    try:
        segments = [_probe(path) for path in plan.paths]
        if plan.how == "remux":
            _remux(segments, out_path)
        else:
            _reencode(segments, out_path, bit_rate=plan.bit_rate, threads=threads, sound=plan.sound)
    except av.FFmpegError as exc:
        raise ClipError(f"the video could not be read: {exc}") from None
    return Joined(plan.how, sum(s.length for s in segments), time.process_time() - started)


def _remux(segments: list[_Segment], out_path: Path) -> None:
    """Copy every packet, each segment's timestamps moved to start where the previous one ended."""
    with av.open(str(out_path), "w", format="mp4", options=MP4_OPTIONS) as output:
        outputs: list[Any] = []
        last_dts: list[int | None] = []
        before = 0.0  # the length of the segments already written
        for number, segment in enumerate(segments):
            with av.open(str(segment.path)) as container:
                streams = [s for s in container.streams if s.type in ("video", "audio")]
                if number == 0:
                    outputs = [output.add_stream_from_template(s) for s in streams]
                    last_dts = [None] * len(outputs)
                moved = segments[0].start + before - segment.start  # seconds
                for packet in container.demux(*streams):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    index = streams.index(packet.stream)
                    shift = round(moved / packet.time_base)
                    packet.dts += shift
                    packet.pts = packet.pts + shift if packet.pts is not None else None
                    previous = last_dts[index]
                    if previous is not None and packet.dts <= previous:  # keep the muxer's order strict
                        packet.dts = previous + 1
                        if packet.pts is not None and packet.pts < packet.dts:
                            packet.pts = packet.dts
                    last_dts[index] = packet.dts
                    packet.stream = outputs[index]
                    output.mux(packet)
            before += segment.length


def _reencode(segments: list[_Segment], out_path: Path, *, bit_rate: int, threads: int, sound: bool = False) -> None:
    """Decode every segment and encode one H.264 video at the first segment's size and `bit_rate` (capped, so the
    plan's size estimate holds); each frame keeps its time within its segment, moved by the length of the segments
    before it. With `sound`, one AAC track too, each segment's sound (or, for a silent one, silence) filling its
    segment's place exactly, so the track lasts the sum of the segments."""
    with av.open(str(segments[0].path)) as first:
        template = first.streams.video[0]
        width, height = template.codec_context.width, template.codec_context.height
        rate = template.average_rate or Fraction(24)
    width, height = _even(width, height)
    audio_format = _audio_format([segment.path for segment in segments]) if sound else None
    options = {"preset": ENCODE_PRESET, "threads": str(threads), "maxrate": str(bit_rate), "bufsize": str(bit_rate)}
    with av.open(str(out_path), "w", format="mp4", options=MP4_OPTIONS) as output:
        stream = output.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bit_rate
        stream.codec_context.time_base = ENCODE_TIME_BASE
        stream.time_base = ENCODE_TIME_BASE
        track = _Track(output, *audio_format) if audio_format is not None else None
        offset = 0.0
        last_pts = -1
        lasting: dict[int, int] = {}  # a frame's pts -> its duration, set on its packet
        for segment in segments:
            with av.open(str(segment.path)) as container:
                source = container.streams.video[0]
                source.thread_type = "AUTO"
                for frame in container.decode(source):
                    if frame.pts is None or frame.time_base is None:
                        continue
                    at = offset + float(frame.pts * frame.time_base) - segment.start
                    pts = max(round(at / ENCODE_TIME_BASE), last_pts + 1)
                    if frame.duration:  # each frame lasts as long as in its segment, the last one too
                        lasting[pts] = round(frame.duration * frame.time_base / ENCODE_TIME_BASE)
                    # (before the times are set: a frame already in the right shape is its own reformat)
                    out = frame.reformat(width=width, height=height, format="yuv420p")
                    out.pts, out.time_base = pts, ENCODE_TIME_BASE
                    last_pts = pts
                    _mux(output, stream.encode(out), lasting)
                if track is not None:
                    track.add(container, offset, offset + segment.length)
            offset += segment.length
        _mux(output, stream.encode(None), lasting)
        if track is not None:
            track.close()


def _audio_format(paths: Sequence[Path]) -> tuple[int, str]:
    """The joined track's sample rate and layout: the first segment with sound's."""
    for path in paths:
        with av.open(str(path)) as container:
            if container.streams.audio:
                context = container.streams.audio[0].codec_context
                return context.sample_rate or DEFAULT_AUDIO[0], context.layout.name or DEFAULT_AUDIO[1]
    return DEFAULT_AUDIO


class _Track:
    """A re-encoded join's one AAC track, written in order: each segment's sound resampled to the track's format,
    cut or padded with silence to its segment's place."""

    def __init__(self, output: Any, rate: int, layout: str) -> None:
        self.output = output
        self.rate, self.layout = rate, layout
        self.stream = output.add_stream("aac", rate=rate, layout=layout)
        self.stream.bit_rate = AUDIO_BIT_RATE
        self.width = 2 * len(av.AudioLayout(layout).channels)  # bytes per sample, 16-bit, every channel
        self.written = 0  # samples

    def add(self, container: InputContainer, start: float, end: float) -> None:
        """The sound of `container` from `start` to `end` (seconds in the joined video); silence where it has none."""
        self._pad(start)
        limit = round(end * self.rate)
        if container.streams.audio:
            container.seek(0)
            resampler = av.AudioResampler(format="s16", layout=self.layout, rate=self.rate)
            decoded = container.decode(container.streams.audio[0])
            frames = [out for frame in decoded for out in resampler.resample(frame)] + resampler.resample(None)
            for out in frames:
                room = limit - self.written
                if room > 0:
                    self._write(bytes(out.planes[0])[: min(out.samples, room) * self.width])
        self._pad(end)

    def _pad(self, until: float) -> None:
        missing = round(until * self.rate) - self.written
        if missing > 0:
            self._write(bytes(missing * self.width))

    def _write(self, pcm: bytes) -> None:
        step = AUDIO_CHUNK * self.width
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step]
            frame = av.AudioFrame(format="s16", layout=self.layout, samples=len(piece) // self.width)
            frame.planes[0].update(piece)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.written, Fraction(1, self.rate)
            self.written += frame.samples
            for packet in self.stream.encode(frame):
                self.output.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.output.mux(packet)


def _mux(output: Any, packets: list[Any], lasting: dict[int, int]) -> None:
    for packet in packets:
        packet.duration = lasting.pop(packet.pts, packet.duration)
        output.mux(packet)
