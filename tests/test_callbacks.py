"""Provider callbacks: Standard Webhooks signatures, and a callback as a hint that is never trusted alone."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from bot.callbacks import BadSignature, callback_task_id, sign, verify
from bot.simulator import GatewayVariant
from tests.fake_discord import wait_until
from tests.harness import Harness, callback_settings, harness

SECRET = "whsec_" + base64.b64encode(b"a-very-secret-callback-key").decode()


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, "msg_1", stamp, body),
    }


def test_a_good_signature_passes_among_several() -> None:
    body = b'{"id": "1"}'
    headers = signed(body)
    headers["webhook-signature"] = "v1,bm90IGl0 " + headers["webhook-signature"]
    verify(SECRET, headers, body, time.time())


OTHER = "whsec_" + base64.b64encode(b"another key").decode()


@pytest.mark.parametrize(
    ("make_headers", "message"),
    [
        (lambda: {}, "timestamp"),
        (lambda: {"webhook-timestamp": "x"}, "timestamp"),
        (lambda: signed(b'{"id": "1"}', at=int(time.time()) - 301), "stale"),
        (lambda: signed(b'{"id": "1"}', at=int(time.time()) + 301), "future"),
        (lambda: signed(b'{"id": "1"}', secret=OTHER), "no matching"),
        (lambda: signed(b'{"id": "2"}'), "no matching"),  # the body was changed
    ],
    ids=["none", "malformed", "stale", "future", "other-key", "other-body"],
)
def test_bad_signatures_are_refused(make_headers: Callable[[], dict[str, str]], message: str) -> None:
    with pytest.raises(BadSignature, match=message):
        verify(SECRET, make_headers(), b'{"id": "1"}', time.time())


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides = {
            **callback_settings(),
            "callback_secret": SECRET,
            "poll_interval_seconds": 60.0,  # polling cannot deliver within the test: only callbacks can
        }
        running.sim.callback_secret = SECRET
        yield running


async def test_signed_callbacks_deliver_without_waiting_for_a_poll(world: Harness) -> None:
    fake = world.discord
    async with world.running():
        await fake.slash("video", {"prompt": "called back"}, sub="text")
        job = await world.job_in("delivered")
    [post] = [r for r in world.sim.requests if r.method == "POST"]
    assert post.json["options"]["callback_url"] == world.settings_overrides["callback_public_url"]
    asked = [r for r in world.sim.requests if r.query.get("task_ids") == job.provider_task_id]
    assert asked  # the callback was only a hint: the bot asked the provider itself
    assert len([m for m in fake.messages[str(job.thread_id)] if m["files"]]) == 1


async def test_a_forged_or_unsigned_callback_changes_nothing(world: Harness) -> None:
    fake = world.discord
    world.sim.hold = True
    world.sim.callback_secret = None  # the simulator's own callbacks are now unsigned: refused
    async with world.running():
        await fake.slash("video", {"prompt": "forge me"}, sub="text")
        job = await world.job_in("submitted", "processing")
        url = world.settings_overrides["callback_public_url"]
        lie = json.dumps({"id": job.provider_task_id, "status": "succeeded", "outputs": [
            {"type": "video", "id": "1", "url": "http://127.0.0.1:1/evil.mp4"}]}).encode()  # fmt: skip
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=lie) as unsigned:
                assert unsigned.status == 401
            async with session.post(url, data=lie, headers=signed(lie)) as forged:
                assert forged.status == 204  # well signed, so taken as a hint: the bot asks the provider
            await world.hints_handled(1)  # the hint was acted on: the provider was asked
        current = await world.resources.store.get_job(job.id)
        world.sim.finish()
    assert current is not None and current.status in ("submitted", "processing") and current.video_url is None


@pytest.mark.parametrize("shape", ["page", "native"])
async def test_unsigned_callbacks_of_either_shape_are_hints_when_no_secret_is_set(tmp_path: Path, shape: str) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {
            **callback_settings(),
            "poll_interval_seconds": 60.0,  # only a callback can deliver within the test
        }
        world.sim.variant = GatewayVariant(callbacks=shape)  # type: ignore[arg-type]
        async with world.running():
            await world.discord.slash("video", {"prompt": f"{shape} callback"}, sub="text")
            job = await world.job_in("delivered")
        asked = [r for r in world.sim.requests if r.query.get("task_ids") == job.provider_task_id]
        assert asked  # the callback named the task; the bot asked the provider itself


@pytest.mark.parametrize(
    ("body", "task_id"),
    [
        (b'{"id": "12"}', "12"),
        (b'{"task_id": 901930004609634393, "task_status": "succeed"}', "901930004609634393"),
        (b'{"data": {"task_id": "7"}}', "7"),
        (b'{"task_status": "succeed"}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b'{"id": true}', None),
    ],
)
def test_the_task_id_is_read_from_either_shape(body: bytes, task_id: str | None) -> None:
    assert callback_task_id(body) == task_id


@pytest.mark.parametrize("arriving", ["at-once", "one-after-another"])
async def test_callbacks_arriving_together_are_answered_by_one_query(tmp_path: Path, arriving: str) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {
            **callback_settings(),
            "poll_interval_seconds": 60.0,  # no poll within the test: only the callbacks ask
            "member_jobs_in_flight": 10,
            "provider_concurrency": 10,
        }
        world.sim.hold = True
        world.sim.processing_after = 3600.0  # no state change of its own: only our burst calls back
        async with world.running() as bot:
            if arriving == "one-after-another":
                # A burst spread over time: each callback answered before the next is sent. The window is widened
                # so that a loaded machine cannot split the burst; without waiting for the rest, each asks alone.
                bot.extensions["cogs.poller"].HINT_COALESCE_SECONDS = 1.0
            for n in range(8):
                await world.discord.slash("video", {"prompt": f"burst {n}"}, sub="text")

            async def all_at_the_provider() -> bool:
                return len(await world.resources.jobs.in_state("submitted", "processing")) == 8

            await wait_until(all_at_the_provider, within=30)
            jobs = await world.resources.jobs.in_state("submitted", "processing")
            asked_before = len([r for r in world.sim.requests if r.method == "GET"])
            url = world.settings_overrides["callback_public_url"]
            async with aiohttp.ClientSession() as session:

                async def call_back(task_id: str) -> int:
                    async with session.post(url, json={"task_id": task_id, "task_status": "succeed"}) as answer:
                        return answer.status

                if arriving == "at-once":
                    assert await asyncio.gather(*(call_back(j.provider_task_id or "") for j in jobs)) == [204] * 8
                else:
                    assert [await call_back(j.provider_task_id or "") for j in jobs] == [204] * 8
            await world.hints_handled(8)
            queries = [r for r in world.sim.requests if r.method == "GET"][asked_before:]
    assert len(queries) == 1  # one batched query for the whole burst
    assert sorted(queries[0].query["task_ids"].split(",")) == sorted(j.provider_task_id for j in jobs)
