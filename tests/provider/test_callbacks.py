"""Provider callbacks: Standard Webhooks signatures, and a callback as a hint that is never trusted alone."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest

from bot.provider.callbacks import BadSignature, callback_task_id, sign, verify
from bot.provider.sim_variant import GatewayVariant
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


def lookups_of(world: Harness) -> list[list[str]]:
    """Record the task ids each lookup of the running bot's store asks for (one list per query)."""
    store = world.resources.store
    asked: list[list[str]] = []
    for name, many in (("job_by_task", False), ("jobs_by_tasks", True)):
        original = getattr(store, name, None)
        if original is None:
            continue

        def spy(ids: Any, _original: Any = original, _many: bool = many) -> Any:
            asked.append(list(ids) if _many else [ids])
            return _original(ids)

        setattr(store, name, spy)
    return asked


MALFORMED = ["a b", "x" * 65, "../../etc/passwd", "1'; DROP TABLE jobs; --", "\u00e9t\u00e9", "-1", "<script>"]


async def test_malformed_task_ids_are_refused_with_400_and_no_query(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {**callback_settings(), "poll_interval_seconds": 60.0}
        async with world.running(), aiohttp.ClientSession() as session:
            asked = lookups_of(world)
            url = world.settings_overrides["callback_public_url"]
            for task_id in MALFORMED:
                async with session.post(url, json={"task_id": task_id, "task_status": "succeed"}) as answer:
                    assert answer.status == 400, task_id
            for good in ("901930004609634393", "3f2b8c1e-9d4a-4e1b-8f00-5a6b7c8d9e0f", "CjikY2dFT3oAAAAAAmOVbQ"):
                async with session.post(url, json={"task_id": good}) as answer:
                    assert answer.status == 204, good  # real ids' shapes pass
            await world.hints_handled(3)
    assert sorted(task_id for query in asked for task_id in query) == sorted(
        ["901930004609634393", "3f2b8c1e-9d4a-4e1b-8f00-5a6b7c8d9e0f", "CjikY2dFT3oAAAAAAmOVbQ"]
    )


async def test_hints_are_looked_up_in_one_query_and_the_waiting_ones_are_bounded(tmp_path: Path) -> None:
    from cogs.poller import MAX_PENDING_HINTS

    async with harness(tmp_path) as world:
        world.settings_overrides = {"poll_interval_seconds": 60.0}
        async with world.running():
            poller = world.poller()
            asked = lookups_of(world)
            before = prometheus_client.REGISTRY.get_sample_value("kling_bot_callbacks_dropped_total") or 0.0
            await asyncio.gather(*(poller.hint(str(10**17 + n)) for n in range(MAX_PENDING_HINTS + 500)))
            assert len(poller.hinted) == MAX_PENDING_HINTS  # the excess was dropped, and counted
            after = prometheus_client.REGISTRY.get_sample_value("kling_bot_callbacks_dropped_total")
            assert after == before + 500
            await world.hints_handled(MAX_PENDING_HINTS)
    assert [len(query) for query in asked] == [MAX_PENDING_HINTS]  # one query for them all


async def test_random_ids_are_looked_up_while_a_tick_holds_the_lock(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {**callback_settings(), "poll_interval_seconds": 60.0}
        async with world.running(), aiohttp.ClientSession() as session:
            poller = world.poller()
            url = world.settings_overrides["callback_public_url"]
            async with poller.lock:  # as a long tick would
                for n in range(50):
                    async with session.post(url, json={"task_id": str(10**17 + n)}) as answer:
                        assert answer.status == 204
                # Made-up ids match no job: they are looked up and forgotten without waiting for the tick.
                await wait_until(lambda: poller.hints_handled >= 50 and not poller.hinted, within=5)


async def test_a_client_over_its_rate_gets_429_and_other_clients_are_still_served(tmp_path: Path) -> None:
    async with harness(tmp_path) as world:
        world.settings_overrides = {
            **callback_settings(),
            "poll_interval_seconds": 60.0,
            "callback_rate_per_second": 0.01,  # no token comes back within the test
            "callback_rate_burst": 5,
        }
        url = world.settings_overrides["callback_public_url"]
        async with world.running():
            async with aiohttp.ClientSession() as flooder:
                answers = []
                for n in range(8):
                    async with flooder.post(url, json={"task_id": str(10**17 + n)}) as answer:
                        answers.append((answer.status, answer.headers.get("Retry-After")))
            other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # another client address
            async with (
                aiohttp.ClientSession(connector=other) as provider,
                provider.post(url, json={"task_id": "901930004609634393"}) as answer,
            ):
                assert answer.status == 204
    assert answers == [(204, None)] * 5 + [(429, "1")] * 3


def test_the_rate_limit_refills_at_its_rate_and_remembers_a_bounded_number_of_clients() -> None:
    from bot.provider.callbacks import MAX_CLIENTS, RateLimit

    now = [0.0]
    limit = RateLimit(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [limit.allow("a") for _ in range(2)] == [True, False]
    assert limit.allow("b")  # each address has its own bucket
    for n in range(MAX_CLIENTS + 10):
        limit.allow(f"10.0.{n // 256}.{n % 256}")
    assert len(limit.buckets) == MAX_CLIENTS
