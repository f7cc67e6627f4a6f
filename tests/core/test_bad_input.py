"""Bad input on purpose: any prompt, any answer from the provider, broken video links, and secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.core.jobs import InvalidRequest, JobRequest, JobService, SubmitRefused
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.postgres import PgStore
from bot.storage.sqlite import Store
from cogs.messages import job_card, thread_name
from tests.conftest import API_KEY, RecordedSleeps
from tests.fake_discord import wait_until
from tests.harness import KEY, Harness, harness

pytest_plugins = ["tests.postgres"]

TRICKY = [
    "@everyone look", "<@&123> <@456> <#789> @here", "**bold** __under__ ~~gone~~ ||spoiler|| `code` > quote",
    "'; DROP TABLE jobs; --", "Robert'); DELETE FROM jobs WHERE ('1'='1", "\u200b\u200d\ufeff zero width",
    "\u202e right to left \u202c", "مرحبا بالعالم", "🦊🎬" * 100, "a\x00b", "x" * 10_000, "\n\n\n", "",
]  # fmt: skip


@contextlib.asynccontextmanager
async def service_over_simulator() -> AsyncIterator[tuple[JobService, KlingSimulator, Store]]:
    """A fresh simulator, database and service, for one generated example."""
    sim = KlingSimulator(api_key=API_KEY, endpoint_path="fuzz", render_seconds=0)
    await sim.start()
    with tempfile.TemporaryDirectory() as folder:
        store = await Store.open(Path(folder) / "fuzz.sqlite3")
        try:
            async with aiohttp.ClientSession() as session:
                kling = KlingClient(session, root_url=f"{sim.base_url()}/fuzz", api_key=SecretStr(API_KEY),
                                    max_retries=1, sleep=RecordedSleeps())  # fmt: skip
                yield JobService(store, kling, provider_concurrency=100), sim, store
        finally:
            await store.close()
            await sim.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def check_prompt(prompt: str) -> None:
    async def scenario() -> None:
        async with service_over_simulator() as (service, sim, _store):
            try:
                job = await service.create(JobRequest("text", prompt))
            except InvalidRequest as refused:
                assert str(refused) and sim.requests == []
                return
            except SubmitRefused as refused:  # the provider's content policy ("forbidden", in any case)
                [post] = [r for r in sim.requests if r.method == "POST"]
                assert post.json["prompt"] == prompt and refused.reason
                return
            [post] = [r for r in sim.requests if r.method == "POST"]
            assert post.json["prompt"] == prompt  # sent exactly
            card = job_card(job).to_dict()
            assert len(card.get("description", "")) <= 4096
            assert 1 <= len(thread_name(job)) <= 100

    run(scenario)


@pytest.mark.parametrize("prompt", TRICKY)
def test_tricky_prompts_are_sent_exactly_or_refused_clearly(prompt: str) -> None:
    check_prompt(prompt)


async def test_tricky_prompts_are_stored_and_sent_exactly_or_refused_clearly_on_postgresql(
    sim: KlingSimulator, kling: KlingClient, postgres_dsn: str
) -> None:
    # PostgreSQL's text holds less than SQLite's (no NUL): what it cannot store must be refused in words, not fail.
    store = await PgStore.open(postgres_dsn)
    try:
        service = JobService(store, kling, provider_concurrency=100)
        for prompt in TRICKY:
            before = len(sim.requests)
            try:
                job = await service.create(JobRequest("text", prompt))
            except InvalidRequest as refused:
                assert str(refused) and len(sim.requests) == before
                continue
            [post] = [r for r in sim.requests[before:] if r.method == "POST"]
            stored = await store.get_job(job.id)
            assert post.json["prompt"] == prompt and stored is not None and stored.prompt == prompt
    finally:
        await store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=0, max_size=4000))
def test_any_unicode_prompt_is_sent_exactly_or_refused_clearly(prompt: str) -> None:
    check_prompt(prompt)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
    | st.just("x" * 100_000) | st.just("<html><body>502</body></html>"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
FIELDS = st.sampled_from(["id", "status", "message", "outputs", "billing", "create_time", "update_time", None])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=FIELDS, value=JSON, drop=st.booleans())
def test_a_fuzzed_task_record_never_crashes_the_poll_nor_loses_the_job(
    field: str | None, value: Any, drop: bool
) -> None:
    def rewrite(record: dict[str, Any]) -> Any:
        if field is None:
            return value  # the whole record replaced
        changed = dict(record)
        if drop:
            changed.pop(field, None)
        else:
            changed[field] = value
        return changed

    async def scenario() -> None:
        async with service_over_simulator() as (service, sim, store):
            job = await service.create(JobRequest("text", "fuzz me"))
            sim.rewrite = rewrite
            await service.poll_once()  # never raises
            after = await store.get_job(job.id)
            assert after is not None and after.status in ("submitted", "processing", "succeeded", "failed")
            if after.status == "failed":
                assert after.error  # a reason in its row
            sim.rewrite = None
            await service.poll_once()  # the loop goes on, and an honest answer settles the job
            final = await store.get_job(job.id)
            assert final is not None and final.status in ("succeeded", "failed")

    run(scenario)


@pytest.mark.parametrize("fault", ["html", "bad_json", "empty", "malformed"])
async def test_whole_answers_that_are_not_the_api_leave_jobs_in_flight(
    sim: KlingSimulator, service: JobService, store: Store, fault: str
) -> None:
    job = await service.create(JobRequest("text", "garbled"))
    sim.fail_next(fault, on="query", times=10)
    assert await service.poll_once() == []
    assert (await store.get_job(job.id)).status == "submitted"  # type: ignore[union-attr]


async def test_a_success_without_a_video_fails_the_job_and_releases_its_credits(
    sim: KlingSimulator, service: JobService, store: Store
) -> None:
    job = await service.create(JobRequest("text", "empty handed"))
    sim.rewrite = lambda record: {k: v for k, v in record.items() if k != "outputs"}
    [change] = await service.poll_once()
    assert change.job.id == job.id and change.job.status == "failed"
    assert "sent no video" in (change.job.error or "")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


@pytest.mark.parametrize("fault", ["404", "html"])
async def test_a_dead_video_link_fails_the_job_tells_the_member_and_releases_credits(
    world: Harness, fault: str
) -> None:
    fake = world.discord
    world.sim.video_fault = fault
    async with world.running():
        await fake.slash("video", {"prompt": "vanishing"}, sub="text")
        job = await world.job_in("failed")
        await wait_until(lambda: fake.threads() and len(fake.messages[fake.threads()[0]["id"]]) >= 2)
        status = await world.resources.credits.status(int(fake.guild_id), int(fake.users["alice"]["id"]), ())
    assert job.delivery_attempts == 3 and "could not be fetched" in (job.error or "")
    told = fake.messages[fake.threads()[0]["id"]][-1]
    assert "could not be made" in told["content"] and "credits were not used" in told["content"]
    assert (status.used, status.reserved) == (0, 0)


async def test_secrets_appear_nowhere(world: Harness, caplog: pytest.LogCaptureFixture) -> None:
    fake = world.discord
    with caplog.at_level(logging.DEBUG):
        async with world.running() as bot:
            assert KEY not in repr(bot.settings) and fake.token not in repr(bot.settings)
            await fake.slash("video", {"prompt": "a fine clip"}, sub="text")
            await world.job_in("delivered")
            refused = await fake.slash("video", {"prompt": "forbidden clip"}, sub="text")
            await wait_until(lambda: refused.texts() and "content policy" in refused.texts()[0])
            world.sim.fail_next("auth", on="query", times=5)
            world.sim.hold = True
            await fake.slash("video", {"prompt": "fail-render please"}, sub="text", user="bob")
            await world.more_ticks(5)  # polls that hit the refused key
            world.sim.hold = False
            await world.job_in("failed")
    everything = caplog.text + repr(fake.requests) + repr(fake.messages) + repr(fake.interactions)
    for secret in (KEY, fake.token):
        assert secret not in everything
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # failures were logged, without secrets


def test_a_prompt_the_provider_refuses_is_refused_clearly() -> None:
    check_prompt("FORBIDDEN")  # what Hypothesis once found: the simulator's content policy, in capitals
