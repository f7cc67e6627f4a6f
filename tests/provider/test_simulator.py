"""The simulator itself follows the reference: shapes, states over time, limits, faults, callbacks, the video."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from bot.provider.callbacks import verify
from bot.provider.sim_variant import GatewayVariant
from bot.provider.sim_videos import sample_video
from bot.provider.simulator import KlingSimulator, run_forever
from bot.serving.server import serve
from tests.conftest import FakeClock, make_image
from tests.fake_discord import wait_until

KEY = {"Authorization": "Bearer k"}
TEXT, IMAGE = "videos/text-to-video/kling-3.0-turbo", "videos/image-to-video/kling-3.0-turbo"
Answer = tuple[int, Any]


@pytest.fixture
async def timed() -> AsyncIterator[tuple[KlingSimulator, FakeClock, str]]:
    """A simulator on a fake clock (tasks: processing at 5 s, done at 40 s)."""
    clock = FakeClock(0.0)
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


def noise(width: int, height: int) -> bytes:
    """An uncompressed PNG of random pixels: about 3 bytes per pixel whatever the encoder."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG", compress_level=0)
    return out.getvalue()


async def test_a_task_moves_by_the_clock_and_ends_with_outputs_and_billing(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
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
    timed: tuple[KlingSimulator, FakeClock, str],
    session: aiohttp.ClientSession,
    settings: dict,
    amount: str,
    duration: str,
) -> None:
    _, clock, root = timed
    task_id = (await submit(session, root, {"prompt": "p", "settings": settings}))[1]["data"]["id"]
    clock.now = 100
    [done] = (await query(session, root, task_ids=task_id))[1]["data"]
    assert done["billing"][0]["amount"] == amount and done["outputs"][0]["duration"] == duration


async def test_limits_the_provider_enforces(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
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
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
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


async def test_keys_and_paths(timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession) -> None:
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
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession, fault: str, status: int, code: int
) -> None:
    sim, _, root = timed
    sim.fail_next(fault, on="query")
    answer = await query(session, root, task_ids="1")
    assert answer[0] == status and answer[1]["code"] == code and answer[1]["data"] is None and answer[1]["message"]
    assert await query(session, root, task_ids="1") == (200, envelope(0, data=[]))


@pytest.mark.parametrize(("fault", "status"), [("html", 502), ("bad_json", 200), ("empty", 200)])
async def test_answers_that_are_not_json(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession, fault: str, status: int
) -> None:
    sim, _, root = timed
    sim.fail_next(fault, on="submit")
    async with session.post(f"{root}/{TEXT}", json={"prompt": "p"}, headers=KEY) as response:
        assert response.status == status
        with pytest.raises(ValueError):
            json.loads(await response.read())
    assert sim.tasks == {}


async def test_faults_count_and_match_their_kind(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
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


async def test_slow_then_normal(timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession) -> None:
    sim, _, root = timed
    sim.fail_next("slow", delay=0.1)
    started = time.monotonic()
    assert (await query(session, root, task_ids="1"))[0] == 200
    assert time.monotonic() - started >= 0.1


async def test_accept_then_error_keeps_the_task_findable_by_external_id(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    sim.fail_next("accept_then_error", on="submit")
    status, answer = await submit(session, root, {"prompt": "p", "options": {"external_task_id": "job-1"}})
    assert (status, answer["code"]) == (500, 5000)
    [task] = (await query(session, root, external_task_ids="job-1"))[1]["data"]
    assert task["id"] in sim.tasks and "external_task_id" not in task
    assert (await submit(session, root, {"prompt": "p", "options": {"external_task_id": "job-1"}}))[0] == 400


async def test_malformed_answers(timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession) -> None:
    sim, _, root = timed
    sim.fail_next("malformed", on="submit")
    status, answer = await submit(session, root, {"prompt": "p"})
    assert status == 200 and answer["code"] == 0 and "id" not in answer["data"] and sim.tasks == {}
    sim.fail_next("malformed", on="query")
    status, answer = await query(session, root, task_ids="1")
    assert status == 200 and answer["code"] == 0 and {"unexpected": True} in answer["data"]


async def test_content_policy_and_render_failure(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    status, answer = await submit(session, root, {"prompt": "Something FORBIDDEN here"})
    assert (status, answer["code"]) == (400, 1301) and "content safety" in answer["message"] and sim.tasks == {}
    task_id = (await submit(session, root, {"prompt": "please fail-render"}))[1]["data"]["id"]
    clock.now = 41
    [task] = (await query(session, root, task_ids=task_id))[1]["data"]
    assert task["status"] == "failed" and task["message"] == "Video generation failed: internal render error"
    assert "outputs" not in task and "billing" not in task


async def test_hold_and_finish(timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession) -> None:
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
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
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


# --- gateway variants: one switch each, every default the provider's page ------------------------------------


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]]]:
    """A callback receiver: its URL and a queue of (headers, raw body) as they arrive."""
    received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        received.put_nowait((dict(request.headers), await request.read()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


def test_variant_parse_reads_each_switch_and_names_a_bad_item() -> None:
    assert GatewayVariant.parse([]) == GatewayVariant()
    parsed = GatewayVariant.parse(
        ["query_lists=partial", "query_cap=5", "statuses=legacy", "numbers=true", "first_frame=url_only",
         "fetch_urls=false", "callbacks=native", "late_submit=40", "dedupe_external_ids=no"]
    )  # fmt: skip
    assert parsed == GatewayVariant("partial", 5, "legacy", True, "url_only", False, "native", 40.0, False)
    assert GatewayVariant.parse(["late_submit=none"]).late_submit is None
    for bad in ("query_lists=maybe", "numbers=perhaps", "query_cap=0", "query_cap=x", "late_submit=-1",
                "late_submit=inf", "colour=blue", "numbers"):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            GatewayVariant.parse(["statuses=legacy", bad])


async def test_query_lists_refuse_takes_one_id_per_parameter(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    sim.variant = GatewayVariant(query_lists="refuse")
    first = (await submit(session, root, {"prompt": "a", "options": {"external_task_id": "x"}}))[1]["data"]
    second = (await submit(session, root, {"prompt": "b", "options": {"external_task_id": "y"}}))[1]["data"]
    assert await query(session, root, task_ids=first["id"]) == (200, envelope(0, [first]))
    both = await query(session, root, task_ids=first["id"], external_task_ids="y")
    assert both == (200, envelope(0, [first, second]))
    for params in ({"task_ids": f"{first['id']},{second['id']}"}, {"external_task_ids": "x,y"}):
        status, answer = await query(session, root, **params)
        assert (status, answer["code"], answer["data"]) == (400, 1201, None) and "parameter" in answer["message"]
    sim.variant.query_lists = "accept"
    assert await query(session, root, external_task_ids="x,y") == (200, envelope(0, [first, second]))


async def test_query_lists_partial_answers_only_the_first_task_that_exists(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    sim.variant = GatewayVariant(query_lists="partial")
    first = (await submit(session, root, {"prompt": "a", "options": {"external_task_id": "x"}}))[1]["data"]
    second = (await submit(session, root, {"prompt": "b"}))[1]["data"]
    assert await query(session, root, task_ids=f"{first['id']},{second['id']}") == (200, envelope(0, [first]))
    assert await query(session, root, task_ids=f"404,{second['id']},{first['id']}") == (200, envelope(0, [second]))
    assert await query(session, root, task_ids="404", external_task_ids="nope,x") == (200, envelope(0, [first]))
    assert await query(session, root, task_ids="404,405") == (200, envelope(0, []))


async def test_query_cap_refuses_more_ids_than_n(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    assert await query(session, root, task_ids=",".join(map(str, range(20)))) == (200, envelope(0, []))
    assert await query(session, root, task_ids=",".join(map(str, range(21)))) == (400, envelope(1201))
    sim.variant = GatewayVariant(query_cap=2)
    assert await query(session, root, task_ids="1", external_task_ids="a") == (200, envelope(0, []))
    assert await query(session, root, task_ids="1,2", external_task_ids="a") == (400, envelope(1201))
    assert await query(session, root, task_ids="1,2,3") == (400, envelope(1201))


async def test_legacy_statuses_in_submits_queries_and_callbacks(
    timed: tuple[KlingSimulator, FakeClock, str],
    session: aiohttp.ClientSession,
    hook: tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]],
) -> None:
    sim, clock, root = timed
    url, received = hook
    sim.variant = GatewayVariant(statuses="legacy")
    done = (await submit(session, root, {"prompt": "p", "options": {"callback_url": url}}))[1]["data"]
    failed = (await submit(session, root, {"prompt": "fail-render"}))[1]["data"]
    assert (done["status"], failed["status"]) == ("submitted", "submitted")
    seen = []
    for step in (5, 35):
        clock.advance(step)
        answer = (await query(session, root, task_ids=f"{done['id']},{failed['id']}"))[1]["data"]
        seen.append([task["status"] for task in answer])
        callback = json.loads((await asyncio.wait_for(received.get(), 2))[1])
        assert callback == answer[0]
    assert seen == [["processing", "processing"], ["succeed", "fail"]]


async def test_numbers_flip_the_types_of_every_record(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    sim.variant = GatewayVariant(numbers=True)
    body = {"prompt": "p", "settings": {"duration": 6}}
    submitted = (await submit(session, root, body))[1]["data"]
    assert type(submitted["id"]) is int and str(submitted["id"]) in sim.tasks
    assert type(submitted["create_time"]) is str and submitted["create_time"].isdigit()
    assert submitted["update_time"] == submitted["create_time"]
    clock.advance(40)
    [done] = (await query(session, root, task_ids=str(submitted["id"])))[1]["data"]
    [output] = done["outputs"]
    assert done["id"] == submitted["id"] and type(done["update_time"]) is str and done["update_time"].isdigit()
    assert type(output["id"]) is int and output["id"] == int(sim.tasks[str(done["id"])].output_id)
    assert output["duration"] == 6.041 and type(output["duration"]) is float
    assert done["billing"] == [{"amount": 4.8, "charge_type": "unit", "package_type": "video"}]
    assert type(done["billing"][0]["amount"]) is float
    sim.variant.numbers = False  # the page again: strings of digits and integer times
    [done] = (await query(session, root, task_ids=str(submitted["id"])))[1]["data"]
    assert done["id"] == str(submitted["id"]) and type(done["create_time"]) is int
    assert (done["outputs"][0]["duration"], done["billing"][0]["amount"]) == ("6.041", "4.8")


@pytest.mark.parametrize(
    ("first_frame", "url_code", "base64_code", "message"),
    [("any", 0, 0, None), ("url_only", 0, 1201, "http(s) URL"), ("base64_only", 1201, 0, "raw Base64")],
)
async def test_first_frame_forms_the_gateway_takes(
    timed: tuple[KlingSimulator, FakeClock, str],
    session: aiohttp.ClientSession,
    first_frame: str,
    url_code: int,
    base64_code: int,
    message: str | None,
) -> None:
    sim, _, root = timed
    sim.variant = GatewayVariant.parse([f"first_frame={first_frame}", "fetch_urls=false"])
    answers = []
    for url in ("https://cdn.test/frame.png", frame()):
        status, answer = await submit(session, root, {"contents": [{"type": "first_frame", "url": url}]}, IMAGE)
        assert status == (200 if answer["code"] == 0 else 400)
        answers.append(answer)
    assert [answer["code"] for answer in answers] == [url_code, base64_code]
    assert len(sim.tasks) == [url_code, base64_code].count(0)
    if message is not None:
        assert any(message in answer["message"] for answer in answers)


async def test_fetch_urls_refuses_a_first_frame_url_it_cannot_read(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, _, root = timed
    files = {"good.jpg": make_image(640, 360, "JPEG"), "small.png": make_image(200, 600), "page.html": b"<html/>",
             "webp.png": make_image(640, 360, "WEBP"), "big.png": noise(1200, 1200),
             "huge.png": noise(1900, 1900)}  # fmt: skip
    assert 4_000_000 < len(files["big.png"]) < 10 * 1024 * 1024 < len(files["huge.png"])

    async def serve_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(body=files[name]) if name in files else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", serve_file)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        origin = f"http://127.0.0.1:{port}"

        async def image(name: str) -> Answer:
            body = {"contents": [{"type": "first_frame", "url": f"{origin}/{name}"}]}
            status, answer = await submit(session, root, body, IMAGE)
            return status, (answer["code"], answer["message"])

        assert (await image("good.jpg"))[0] == 200
        assert await image("missing.png") == (400, (1201, "first_frame url could not be fetched (HTTP 404)"))
        assert await image("small.png") == (400, (1201, "first_frame must be at least 300 px on each side"))
        assert await image("page.html") == (400, (1201, "first_frame is not a readable image"))
        assert (await image("webp.png"))[1][0] == 1201
        assert (await image("big.png"))[0] == 200  # many chunks, all read
        assert await image("huge.png") == (400, (1201, "first_frame must be at most 10 MB"))
        fetched = ("good.jpg", "missing.png", "small.png", "page.html", "webp.png", "big.png", "huge.png")
        assert sim.fetched_urls == [f"{origin}/{name}" for name in fetched]
        assert len(sim.tasks) == 2
        sim.variant.fetch_urls = False  # unchecked, as before this switch
        assert (await image("missing.png"))[0] == 200 and len(sim.fetched_urls) == len(fetched)
    finally:
        await runner.cleanup()
    sim.variant.fetch_urls = True
    closed = {"contents": [{"type": "first_frame", "url": f"{origin}/good.jpg"}]}
    status, answer = await submit(session, root, closed, IMAGE)
    assert (status, answer["code"]) == (400, 1201) and answer["message"].startswith("first_frame url could not be")


async def test_native_callbacks_carry_klings_shape_and_are_signed(
    timed: tuple[KlingSimulator, FakeClock, str],
    session: aiohttp.ClientSession,
    hook: tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]],
) -> None:
    sim, clock, root = timed
    url, received = hook
    sim.variant = GatewayVariant(callbacks="native")
    sim.callback_secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    options = {"callback_url": url, "external_task_id": "job-9"}
    task_id = (await submit(session, root, {"prompt": "p", "options": options}))[1]["data"]["id"]
    failing = (await submit(session, root, {"prompt": "fail-render", "options": {"callback_url": url}}))[1]["data"]
    bodies = []
    for step in (5, 35):
        clock.advance(step)
        for _ in range(2):
            headers, raw = await asyncio.wait_for(received.get(), 2)
            verify(sim.callback_secret, {k.lower(): v for k, v in headers.items()}, raw, time.time())
            bodies.append(json.loads(raw))
    [task] = (await query(session, root, task_ids=task_id))[1]["data"]
    [output] = task["outputs"]
    processing = {"task_id": task_id, "task_status": "processing", "task_status_msg": "", "external_task_id": "job-9"}
    videos = [{"id": output["id"], "url": output["url"], "duration": "5.041"}]
    finished = {**processing, "task_status": "succeeded", "task_result": {"videos": videos}}
    failed = {"task_id": failing["id"], "task_status": "failed", "external_task_id": "",
              "task_status_msg": "Video generation failed: internal render error"}  # fmt: skip
    succeeding = [body for body in bodies if body["task_id"] == task_id]
    failing_bodies = [body for body in bodies if body["task_id"] == failing["id"]]
    assert succeeding == [processing, finished]
    assert failing_bodies == [{**failed, "task_status": "processing", "task_status_msg": ""}, failed]


async def test_late_submit_answers_504_and_the_task_appears_later(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    sim.variant = GatewayVariant(late_submit=30)
    assert await submit(session, root, {"prompt": "p", "settings": {"duration": 2}}) == (400, envelope(1201))
    assert (await submit(session, root, {"prompt": "forbidden"}))[1]["code"] == 1301
    async with session.post(
        f"{root}/{TEXT}", json={"prompt": "p", "options": {"external_task_id": "late"}}, headers=KEY
    ) as response:
        assert response.status == 504 and response.content_type == "text/html"
        assert "504 Gateway Time-out" in await response.text()
    assert sim.tasks == {} and sim.tasks_for("late") == []
    clock.advance(29.9)
    assert await query(session, root, external_task_ids="late") == (200, envelope(0, []))
    clock.advance(0.1)
    [task] = (await query(session, root, external_task_ids="late"))[1]["data"]
    assert task["status"] == "submitted" and [t.id for t in sim.tasks_for("late")] == [task["id"]]
    assert (await query(session, root, task_ids=task["id"]))[1]["data"] == [task]
    clock.advance(39.9)  # its render time counts from its appearance: processing at 5 s, done at 40 s
    assert (await query(session, root, task_ids=task["id"]))[1]["data"][0]["status"] == "processing"
    clock.advance(0.1)
    assert (await query(session, root, task_ids=task["id"]))[1]["data"][0]["status"] == "succeeded"
    async with session.post(f"{root}/{TEXT}", json={"prompt": "q"}, headers=KEY) as response:
        assert response.status == 504
    clock.advance(30)
    await wait_until(lambda: len(sim.tasks) == 2)  # the ticker, with no query at all


async def test_late_submit_then_a_resubmit_leaves_one_task_when_ids_are_deduplicated(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    sim.variant = GatewayVariant(late_submit=30)
    body = {"prompt": "p", "options": {"external_task_id": "job"}}
    async with session.post(f"{root}/{TEXT}", json=body, headers=KEY) as response:
        assert response.status == 504
    sim.variant.late_submit = None  # the resubmit arrives before the late one does
    status, answer = await submit(session, root, body)
    assert status == 200 and [t.id for t in sim.tasks_for("job")] == [answer["data"]["id"]]
    clock.advance(30)
    assert [t["id"] for t in (await query(session, root, external_task_ids="job"))[1]["data"]] == [answer["data"]["id"]]
    sim.variant.dedupe_external_ids = False
    assert len(sim.tasks_for("job")) == 1  # the late one was refused when it arrived, not kept for later


async def test_external_ids_not_deduplicated_make_a_second_task(
    timed: tuple[KlingSimulator, FakeClock, str], session: aiohttp.ClientSession
) -> None:
    sim, clock, root = timed
    sim.variant = GatewayVariant(dedupe_external_ids=False)
    body = {"prompt": "p", "options": {"external_task_id": "twice"}}
    first, second = [(await submit(session, root, body))[1]["data"]["id"] for _ in range(2)]
    assert first != second and [t.id for t in sim.tasks_for("twice")] == [first, second]
    clock.advance(40)
    tasks = (await query(session, root, external_task_ids="twice"))[1]["data"]
    assert [(t["id"], t["status"], t["billing"][0]["amount"]) for t in tasks] == [
        (first, "succeeded", "4"), (second, "succeeded", "4")
    ]  # fmt: skip
    sim.variant.dedupe_external_ids = True
    assert await submit(session, root, body) == (400, envelope(1201)) and len(sim.tasks_for("twice")) == 2


async def test_the_command_line_takes_variants_and_prints_them() -> None:
    assert await run_forever("127.0.0.1", 0, "k", "e", 1.0, ["numbers=maybe"]) == 2
    variants = ["query_lists=partial", "statuses=legacy", "numbers=true", "late_submit=40"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "simulate", "--port", "0", *(arg for v in variants for arg in ("--variant", v)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        while not lines or "Gateway variant" not in lines[-1]:
            lines.append((await asyncio.wait_for(process.stdout.readline(), 20)).decode())
            assert lines[-1], "the simulator ended before printing its variant"
        assert lines[-1].strip() == f"Gateway variant: {', '.join(variants)}."
    finally:
        process.terminate()
        await process.wait()
