"""The simulator itself follows the reference: shapes, states over time, limits, the video route."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.simulator import KlingSimulator, sample_video
from tests.conftest import make_image

KEY = {"Authorization": "Bearer k"}


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


async def submit(session: aiohttp.ClientSession, root: str, body: dict) -> tuple[int, dict]:
    async with session.post(f"{root}/videos/text-to-video/kling-3.0-turbo", json=body, headers=KEY) as response:
        return response.status, await response.json()


async def query(session: aiohttp.ClientSession, root: str, **params: str) -> tuple[int, dict]:
    async with session.get(f"{root}/tasks", params=params, headers=KEY) as response:
        return response.status, await response.json()


async def test_a_task_moves_by_the_clock_and_ends_with_outputs_and_billing(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, clock, root = timed
    status, answer = await submit(session, root, {"prompt": "p", "settings": {"resolution": "1080p", "duration": 8}})
    assert status == 200 and answer["code"] == 0 and answer["message"] == "SUCCEED"
    assert set(answer["data"]) == {"id", "status", "message", "create_time", "update_time"}
    task_id = answer["data"]["id"]
    seen = []
    for now in (1, 6, 41):
        clock.now = now
        _, answer = await query(session, root, task_ids=task_id)
        seen.append(answer["data"][0]["status"])
    assert seen == ["submitted", "processing", "succeeded"]
    done = answer["data"][0]
    assert done["billing"] == [{"amount": "8", "charge_type": "unit", "package_type": "video"}]
    assert done["outputs"][0]["duration"] == "8.041"
    async with session.get(done["outputs"][0]["url"]) as response:
        assert response.headers["Content-Type"] == "video/mp4"
        assert await response.read() == sample_video()


async def test_limits_the_provider_enforces(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, _, root = timed
    assert (await submit(session, root, {"prompt": "a", "options": {"external_task_id": "x"}}))[0] == 200
    status, answer = await submit(session, root, {"prompt": "b", "options": {"external_task_id": "x"}})
    assert (status, answer["code"]) == (400, 1201)
    status, answer = await query(session, root, task_ids=",".join(str(n) for n in range(21)))
    assert (status, answer["code"]) == (400, 1201)
    assert (await submit(session, root, {"prompt": "p", "settings": {"duration": 16}}))[1]["code"] == 1201
    assert (await submit(session, root, {"prompt": "p", "settings": {"aspect_ratio": "4:3"}}))[1]["code"] == 1201
    status, answer = await query(session, root, external_task_ids="x")
    assert status == 200 and len(answer["data"]) == 1
    assert (await query(session, root, task_ids="42"))[1]["data"] == []


async def test_first_frames_are_checked_like_the_provider_does(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, _, root = timed

    async def image(url: str) -> int:
        body = {"contents": [{"type": "first_frame", "url": url}]}
        async with session.post(f"{root}/videos/image-to-video/kling-3.0-turbo", json=body, headers=KEY) as response:
            return (await response.json())["code"]

    good = base64.b64encode(make_image(640, 360)).decode()
    assert await image(good) == 0
    assert await image("data:image/png;base64," + good) == 1201
    assert await image(base64.b64encode(make_image(640, 360, "WEBP")).decode()) == 1201
    assert await image(base64.b64encode(make_image(200, 600)).decode()) == 1201
    assert await image("%%% not base64") == 1201


async def test_a_missing_key_is_code_1000(
    timed: tuple[KlingSimulator, Clock, str], session: aiohttp.ClientSession
) -> None:
    _, _, root = timed
    async with session.get(f"{root}/tasks", params={"task_ids": "1"}) as response:
        assert response.status == 401 and (await response.json())["code"] == 1000
