"""The simulator itself follows the reference: shapes, states over time, limits, faults, callbacks, the video."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.serving import serve
from bot.simulator import KlingSimulator, sample_video
from tests.conftest import make_image

KEY = {"Authorization": "Bearer k"}
TEXT, IMAGE = "videos/text-to-video/kling-3.0-turbo", "videos/image-to-video/kling-3.0-turbo"
Answer = tuple[int, Any]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def timed() -> AsyncIterator[tuple[KlingSimulator, Clock, str]]:
    clock = Clock()
    simulator = KlingSimulator(api_key="k", endpoint_path="e", render_seconds=40, processing_after=5, clock=clock)
    await simulator.start()
    try:
        yield simulator, clock, f"{simulator.base_url()}/e/kling"
    finally:
        await simulator.close()


async def submit(session: aiohttp.ClientSession, root: str, body: dict, path: str = TEXT) -> Answer:
    async with session.post(f"{root}/{path}", json=body, headers=KEY) as response:
        return response.status, await response.json()


async def query(session: aiohttp.ClientSession, root: str, **params: str) -> Answer:
    async with session.get(f"{root}/tasks", params=params, headers=KEY) as response:
        return response.status, await response.json()


def envelope(code: int, data: Any = None) -> Any:
    """Matches an envelope with this code (and data), whatever its message and request id."""

    class Envelope:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, dict) and other.get("code") == code and other.get("data") == data

    return Envelope()


def frame(width: int = 640, height: int = 360, fmt: str = "PNG") -> str:
    return base64.b64encode(make_image(width, height, fmt)).decode()


async def test_a_task_moves_by_the_clock_and_ends_with_outputs_and_billing(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, clock, root = timed
    status, answer = await submit(session, root, {"prompt": "p", "settings": {"resolution": "1080p", "duration": 8}})
    assert status == 200 and answer["code"] == 0 and answer["message"] == "SUCCEED" and answer["request_id"]
    data = answer["data"]
    assert set(data) == {"id", "status", "message", "create_time", "update_time"}
    assert (data["status"], data["message"]) == ("submitted", "") and data["create_time"] == data["update_time"]
    assert data["id"].isdigit() and int(data["id"]) > 2**53 and abs(data["create_time"] - time.time() * 1000) < 5000
    seen = []
    for now in (1, 6, 41):
        clock.now = now
        _, answer = await query(session, root, task_ids=data["id"])
        seen.append(answer["data"][0]["status"])
    assert seen == ["submitted", "processing", "succeeded"]
    done = answer["data"][0]
    assert set(done) == {"id", "status", "message", "create_time", "update_time", "outputs", "billing"}
    assert done["billing"] == [{"amount": "8", "charge_type": "unit", "package_type": "video"}]
    [output] = done["outputs"]
    assert output["type"] == "video" and output["id"].isdigit() and output["duration"] == "8.041"
    async with session.get(output["url"]) as response:
        assert response.headers["Content-Type"] == "video/mp4"
        assert int(response.headers["Content-Length"]) == len(sample_video())
        assert await response.read() == sample_video()


@pytest.mark.parametrize(
    ("settings", "amount", "duration"),
    [({}, "4", "5.041"), ({"duration": 6}, "4.8", "6.041"), ({"duration": 3}, "2.4", "3.041"),
     ({"duration": 10, "resolution": "1080p"}, "10", "10.041")],
)  # fmt: skip
async def test_billing_is_the_price_list_as_a_plain_decimal_string(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession, settings: dict, amount: str, duration: str
) -> None:
    _, clock, root = timed
    task_id = (await submit(session, root, {"prompt": "p", "settings": settings}))[1]["data"]["id"]
    clock.now = 100
    [done] = (await query(session, root, task_ids=task_id))[1]["data"]
    assert done["billing"][0]["amount"] == amount and done["outputs"][0]["duration"] == duration


async def test_limits_the_provider_enforces(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, _, root = timed
    assert (await submit(session, root, {"prompt": "a", "options": {"external_task_id": "x"}}))[0] == 200
    status, answer = await submit(session, root, {"prompt": "b", "options": {"external_task_id": "x"}})
    assert (status, answer["code"], answer["data"]) == (400, 1201, None)
    status, answer = await query(
        session, root, task_ids=",".join(str(n) for n in range(15)), external_task_ids="a,b,c,d,e,f"
    )
    assert (status, answer["code"]) == (400, 1201)
    for refused in (
        {"prompt": "p", "settings": {"duration": 16}},
        {"prompt": "p", "settings": {"duration": 2}},
        {"prompt": "p", "settings": {"duration": "5"}},
        {"prompt": "p", "settings": {"resolution": "4k"}},
        {"prompt": "p", "settings": {"aspect_ratio": "4:3"}},
        {"prompt": "p" * 3073},
        {"prompt": ""},
        {"settings": {"duration": 5}},
    ):
        assert await submit(session, root, refused) == (400, envelope(1201)), refused
    assert (await submit(session, root, {"prompt": "p" * 3072, "settings": {"aspect_ratio": "1:1"}}))[0] == 200
    status, answer = await query(session, root, external_task_ids="x")
    assert status == 200 and len(answer["data"]) == 1
    assert await query(session, root, task_ids="42") == (200, envelope(0, data=[]))


async def test_first_frames_are_checked_like_the_provider_does(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, _, root = timed

    async def image(url: str, *extra: dict, settings: dict | None = None) -> int:
        body = {"contents": [{"type": "first_frame", "url": url}, *extra], "settings": settings or {}}
        return (await submit(session, root, body, IMAGE))[1]["code"]

    status, answer = await submit(session, root, {"contents": [{"type": "first_frame", "url": frame()}]}, IMAGE)
    assert status == 200 and answer["data"]["status"] == "submitted"
    assert await image(frame(300, 750, "JPEG"), {"type": "prompt", "text": "t" * 2500}) == 0
    assert await image("https://example.com/a.jpg", settings={"duration": 8, "resolution": "1080p"}) == 0
    assert await image(frame(), {"type": "prompt", "text": "t" * 2501}) == 1201
    assert await image(frame(), settings={"aspect_ratio": "16:9"}) == 1201
    assert await image(frame(), {"type": "first_frame", "url": frame()}) == 1201
    assert await image(frame(), {"type": "last_frame", "url": frame()}) == 1201
    assert await image("data:image/png;base64," + frame()) == 1201
    assert await image(frame(640, 360, "WEBP")) == 1201
    assert await image(frame(200, 600)) == 1201
    assert await image(frame(300, 760)) == 1201
    assert await image(base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()) == 1201
    assert await image("%%% not base64") == 1201
    assert (await submit(session, root, {"contents": [{"type": "prompt", "text": "t"}]}, IMAGE))[1]["code"] == 1201


async def test_keys_and_paths(timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession) -> None:
    sim, _, root = timed
    async with session.get(f"{root}/tasks", params={"task_ids": "1"}) as response:
        answer = await response.json()
        assert response.status == 401 and answer["code"] == 1000 and "authentication failed" in answer["message"]
    async with session.get(f"{root}/tasks", headers={"Authorization": "Bearer nope"}) as response:
        answer = await response.json()
        assert response.status == 401 and answer["code"] == 1002 and "authentication failed" in answer["message"]
    async with session.get(f"{sim.base_url()}/other/kling/tasks", headers=KEY) as response:
        assert response.status == 404 and (await response.json())["code"] == 1203
    async with session.post(f"{root}/videos/text-to-video/kling-2.1", json={"prompt": "p"}, headers=KEY) as response:
        assert response.status == 404 and (await response.json())["code"] == 1203
    assert [r.headers.get("Authorization") for r in sim.requests] == [None, "Bearer nope", "Bearer k", "Bearer k"]
    assert sim.requests[-1].json == {"prompt": "p"} and sim.requests[0].query == {"task_ids": "1"}


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("rate_limit", 429, 1302), ("concurrency", 429, 1303), ("server_error", 500, 5000), ("unavailable", 503, 5001),
     ("credits", 429, 1101), ("auth", 401, 1002), ("accept_then_error", 500, 5000)],
)  # fmt: skip
async def test_each_fault_answers_its_envelope(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession, fault: str, status: int, code: int
) -> None:
    sim, _, root = timed
    sim.fail_next(fault, on="query")
    answer = await query(session, root, task_ids="1")
    assert answer[0] == status and answer[1]["code"] == code and answer[1]["data"] is None and answer[1]["message"]
    assert await query(session, root, task_ids="1") == (200, envelope(0, data=[]))


@pytest.mark.parametrize(("fault", "status"), [("html", 502), ("bad_json", 200), ("empty", 200)])
async def test_answers_that_are_not_json(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession, fault: str, status: int
) -> None:
    sim, _, root = timed
    sim.fail_next(fault, on="submit")
    async with session.post(f"{root}/{TEXT}", json={"prompt": "p"}, headers=KEY) as response:
        assert response.status == status
        with pytest.raises(ValueError):
            json.loads(await response.read())
    assert sim.tasks == {}


async def test_faults_count_and_match_their_kind(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    sim.fail_next("rate_limit", on="submit", times=2)
    sim.fail_next("rate_limit", on="query", retry_after=7)
    async with session.get(f"{root}/tasks", params={"task_ids": "1"}, headers=KEY) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "7"
    for _ in range(2):
        async with session.post(f"{root}/{TEXT}", json={"prompt": "p"}, headers=KEY) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
    assert (await submit(session, root, {"prompt": "p"}))[0] == 200
    with pytest.raises(ValueError):
        sim.fail_next("gremlins")


async def test_slow_then_normal(timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession) -> None:
    sim, _, root = timed
    sim.fail_next("slow", delay=0.1)
    started = time.monotonic()
    assert (await query(session, root, task_ids="1"))[0] == 200
    assert time.monotonic() - started >= 0.1


async def test_accept_then_error_keeps_the_task_findable_by_external_id(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    sim.fail_next("accept_then_error", on="submit")
    status, answer = await submit(session, root, {"prompt": "p", "options": {"external_task_id": "job-1"}})
    assert (status, answer["code"]) == (500, 5000)
    [task] = (await query(session, root, external_task_ids="job-1"))[1]["data"]
    assert task["id"] in sim.tasks and "external_task_id" not in task
    assert (await submit(session, root, {"prompt": "p", "options": {"external_task_id": "job-1"}}))[0] == 400


async def test_malformed_answers(timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession) -> None:
    sim, _, root = timed
    sim.fail_next("malformed", on="submit")
    status, answer = await submit(session, root, {"prompt": "p"})
    assert status == 200 and answer["code"] == 0 and "id" not in answer["data"] and sim.tasks == {}
    sim.fail_next("malformed", on="query")
    status, answer = await query(session, root, task_ids="1")
    assert status == 200 and answer["code"] == 0 and {"unexpected": True} in answer["data"]


async def test_content_policy_and_render_failure(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    status, answer = await submit(session, root, {"prompt": "Something FORBIDDEN here"})
    assert (status, answer["code"]) == (400, 1301) and "content safety" in answer["message"] and sim.tasks == {}
    task_id = (await submit(session, root, {"prompt": "please fail-render"}))[1]["data"]["id"]
    clock.now = 41
    [task] = (await query(session, root, task_ids=task_id))[1]["data"]
    assert task["status"] == "failed" and task["message"] == "Video generation failed: internal render error"
    assert "outputs" not in task and "billing" not in task


async def test_hold_and_finish(timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession) -> None:
    sim, clock, root = timed
    sim.hold = True
    first = (await submit(session, root, {"prompt": "a"}))[1]["data"]["id"]
    second = (await submit(session, root, {"prompt": "b"}))[1]["data"]["id"]
    clock.now = 1000
    statuses = [t["status"] for t in (await query(session, root, task_ids=f"{first},{second}"))[1]["data"]]
    assert statuses == ["processing", "processing"]
    sim.finish(first)
    sim.finish(fail_message="blocked by content safety")
    tasks = (await query(session, root, task_ids=f"{first},{second}"))[1]["data"]
    assert [(t["status"], t["message"]) for t in tasks] == [("succeeded", ""), ("failed", "blocked by content safety")]


async def test_render_seconds_zero_is_done_on_the_first_query(session: aiohttp.ClientSession) -> None:
    sim = KlingSimulator(api_key="k", endpoint_path="e", render_seconds=0, concurrency_limit=1)
    await sim.start()
    try:
        root = f"{sim.base_url()}/e/kling"
        sim.hold = True
        task_id = (await submit(session, root, {"prompt": "p"}))[1]["data"]["id"]
        assert await submit(session, root, {"prompt": "q"}) == (429, envelope(1303))
        sim.hold = False
        assert (await query(session, root, task_ids=task_id))[1]["data"][0]["status"] == "succeeded"
        assert (await submit(session, root, {"prompt": "q"}))[0] == 200
    finally:
        await sim.close()


async def test_videos_need_no_key_and_unknown_ones_are_404(session: aiohttp.ClientSession) -> None:
    sim = KlingSimulator(api_key="k", endpoint_path="e", render_seconds=0, video_bytes=b"x" * 200_000)
    await sim.start()
    try:
        task_id = (await submit(session, f"{sim.base_url()}/e/kling", {"prompt": "p"}))[1]["data"]["id"]
        [task] = (await query(session, f"{sim.base_url()}/e/kling", task_ids=task_id))[1]["data"]
        async with session.get(task["outputs"][0]["url"]) as response:
            assert response.status == 200 and await response.read() == b"x" * 200_000
        async with session.get(f"{sim.base_url().removesuffix('/v1/ai')}/videos/123.mp4") as response:
            assert response.status == 404
    finally:
        await sim.close()


async def test_callbacks_post_the_task_record_on_each_change(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, clock, root = timed
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        received.put_nowait(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        body = {"prompt": "p", "options": {"callback_url": f"http://127.0.0.1:{port}/hook"}}
        task_id = (await submit(session, root, body))[1]["data"]["id"]
        for now, status in ((6, "processing"), (41, "succeeded")):
            clock.now = now
            record = await asyncio.wait_for(received.get(), 2)
            assert (record["id"], record["status"]) == (task_id, status)
        assert record == (await query(session, root, task_ids=task_id))[1]["data"][0]
    finally:
        await runner.cleanup()


def test_the_sample_is_a_small_real_mp4() -> None:
    data = sample_video()
    assert data[4:8] == b"ftyp" and b"avc1" in data and b"mp4a" in data and 10_000 < len(data) < 200_000
