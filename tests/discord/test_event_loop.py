"""Big first frames are encoded off the event loop, arrive intact, and only a few are in memory at once.

How much the loop lags during a burst is a timing, measured by `python -m bench.burst`, not asserted here."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bench.burst import noise_jpeg
from bot.core.jobs import JobRequest, JobService
from bot.media import images
from bot.media.images import MAX_CONCURRENT_SENDS, FirstFrame, encode_base64, prepare_first_frame
from bot.provider import encoding
from bot.provider.encoding import encode_json
from bot.provider.simulator import KlingSimulator


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return noise_jpeg(7)  # ~9 MB: one Base64 and JSON encode of it takes tens of milliseconds


async def test_a_big_frame_arrives_at_the_provider_intact(
    sim: KlingSimulator, service: JobService, big_jpeg: bytes
) -> None:
    frame = prepare_first_frame(big_jpeg)
    job = await service.create(JobRequest("image", "waves", image=frame, image_source="big.jpg"))
    assert job.status == "submitted"
    sent = sim.requests[-1]
    assert sent.method == "POST" and sent.headers["Content-Type"] == "application/json"
    assert sent.json["contents"] == [
        {"type": "first_frame", "url": base64.b64encode(big_jpeg).decode("ascii")},
        {"type": "prompt", "text": "waves"},
    ]
    assert base64.b64decode(sent.json["contents"][0]["url"], validate=True) == big_jpeg
    assert sent.json["options"]["external_task_id"] == job.id


async def test_base64_and_json_of_a_frame_are_made_off_the_loop_thread(
    sim: KlingSimulator, service: JobService, big_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, threading.Thread] = {}

    def recorded(name: str, encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(value: Any) -> Any:
            threads[name] = threading.current_thread()
            return encode(value)

        return run

    def never_on_the_loop(frame: FirstFrame) -> str:
        raise AssertionError("FirstFrame.base64 encodes on the calling thread")

    monkeypatch.setattr(images, "encode_base64", recorded("base64", images.encode_base64))
    monkeypatch.setattr(encoding, "encode_json", recorded("json", encoding.encode_json))
    monkeypatch.setattr(FirstFrame, "base64", property(never_on_the_loop))
    job = await service.create(JobRequest("image", "", image=prepare_first_frame(big_jpeg)))
    assert job.status == "submitted"
    assert set(threads) == {"base64", "json"}
    assert threading.main_thread() not in threads.values()


async def test_small_requests_are_encoded_on_the_loop_without_a_thread(
    sim: KlingSimulator, service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread(value: Any) -> Any:
        raise AssertionError("a small body went to the encoder thread")

    monkeypatch.setattr(encoding, "encode_json", no_thread)
    job = await service.create(JobRequest("text", "a fox in snow"))
    assert job.status == "submitted"
    assert sim.requests[-1].json["prompt"] == "a fox in snow"


async def test_only_a_few_image_submits_are_in_memory_at_once(
    sim: KlingSimulator, service: JobService, png_frame: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = prepare_first_frame(png_frame)
    now, most = 0, 0
    submit = service.kling.submit_image

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal now, most
        now += 1
        most = max(most, now)
        try:
            await asyncio.sleep(0.02)  # long enough for every other job to reach its send
            return await submit(*args, **kwargs)
        finally:
            now -= 1

    monkeypatch.setattr(service.kling, "submit_image", counted)
    jobs = [await service.reserve(JobRequest("image", f"n{n}", image=frame, user_id=n)) for n in range(6)]
    started = await asyncio.gather(*(service.start(job, JobRequest("image", "", image=frame)) for job in jobs))
    assert [job.status for job in started] == ["submitted"] * 6
    assert most == MAX_CONCURRENT_SENDS <= 2  # the promise: at most two frames being sent in memory


@pytest.mark.parametrize(
    "size", [0, 1, 2, 3, images.BASE64_PIECE - 1, images.BASE64_PIECE, 3 * images.BASE64_PIECE + 2]
)
def test_base64_in_pieces_is_plain_base64(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert encode_base64(data) == base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize(
    "value",
    [
        {"url": "A+/=" * 50_000, "n": [1, 2.5, None, True, False], "empty": {}, "list": []},
        {"text": ('é\u2028"\\\n\U0001f600' + "x" * 1000) * 300},  # escapes across piece boundaries
        ["a", {"b": "c"}],
    ],
)
def test_json_in_pieces_is_what_json_dumps_gives(value: Any) -> None:
    assert encode_json(value).read() == json.dumps(value).encode()
