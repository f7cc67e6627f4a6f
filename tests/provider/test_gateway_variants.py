"""The whole pipeline against each way the gateway may differ from its page: every job delivered once, charged once.

Each variant is a `GatewayVariant` switch of the simulator; the bot runs through the fake Discord, and `generate`
as a process. "Charged once" is counted at the provider (one task per job, each billed) and in the quota.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest

from bot.core.model import AT_PROVIDER, Job
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from tests.conftest import make_image
from tests.fake_discord import wait_until
from tests.harness import Harness, harness
from tests.ops.test_cli import env_for, run_cli

VARIANTS = {
    "page": GatewayVariant(),
    "lists refused": GatewayVariant(query_lists="refuse"),
    "lists answered in part": GatewayVariant(query_lists="partial"),
    "at most 3 ids": GatewayVariant(query_cap=3),
    "succeed and fail": GatewayVariant(statuses="legacy"),
    "numbers for strings": GatewayVariant(numbers=True),
    "first frame by URL only": GatewayVariant(first_frame="url_only"),
    "first frame as Base64 only": GatewayVariant(first_frame="base64_only"),
    "tasks created late, ids not deduplicated": GatewayVariant(late_submit=0.6, dedupe_external_ids=False),
}
LOOKUP_SECONDS = 1.5  # the lost-submit window, shortened from 150 s: still longer than the late creation above


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        running.settings_overrides = {"submit_lookup_seconds": LOOKUP_SECONDS, "member_jobs_in_flight": 5}
        yield running


def delivered_posts(world: Harness, job: Job) -> list[dict]:
    """The messages in the job's thread that carry its video, as a file or as its link."""
    messages = world.discord.messages[str(job.thread_id)]
    return [m for m in messages if m["files"] or (job.video_url and job.video_url in m["content"])]


@pytest.mark.parametrize("name", VARIANTS)
async def test_every_job_is_delivered_once_and_charged_once(world: Harness, name: str) -> None:
    fake, sim = world.discord, world.sim
    sim.variant = VARIANTS[name]
    sim.hold = True  # all of them at the provider at once, so one poll asks about them together
    png, webp = make_image(640, 360), make_image(500, 500, "WEBP")
    async with world.running():
        store = world.resources.store
        await fake.slash("video", {"prompt": "one"}, sub="text")
        await fake.slash("video", {"prompt": "two", "duration": 3}, sub="text", user="bob")
        await fake.slash("video", {"prompt": "three", "resolution": "1080p"}, sub="text")
        as_is = fake.add_attachment("frame.png", png, "image/png", 640, 360)
        await fake.slash("video", {"image": as_is, "prompt": "as sent"}, sub="image", user="bob")
        converted = fake.add_attachment("frame.webp", webp, "image/webp", 500, 500)
        await fake.slash("video", {"image": converted, "prompt": "converted"}, sub="image")
        await wait_until(lambda: store_count(world) == 5, within=10)

        async def all_at_the_provider() -> bool:
            return await store.count_in(AT_PROVIDER) == 5

        await wait_until(all_at_the_provider, within=10)
        sim.hold = False
        sim.finish()

        async def all_delivered() -> bool:
            return await store.count_in(("delivered",)) == 5

        await wait_until(all_delivered, within=15)
        jobs = await store.jobs_in(("delivered",))
        used = {
            user: (await world.resources.credits.status(int(fake.guild_id), int(fake.users[user]["id"]), ())).used
            for user in ("alice", "bob")
        }
    for job in jobs:
        assert len(sim.tasks_for(job.id)) == 1, job  # one task, so one bill
        assert len(delivered_posts(world, job)) == 1, job
    assert len(sim.tasks) == 5
    billed = {user: sum(j.cost_billed or 0 for j in jobs if j.user_id == int(fake.users[user]["id"])) for user in used}
    assert used == billed and all(billed.values())
    assert fake.unexpected == []


def store_count(world: Harness) -> int:
    """Jobs whose thread the bot has opened so far (counted in the fake, so no database call in a lambda)."""
    return len(world.discord.threads())


async def test_a_url_only_gateway_gets_the_attachment_or_the_cards_frame(world: Harness) -> None:
    fake, sim = world.discord, world.sim
    sim.variant = GatewayVariant(first_frame="url_only")
    png, webp = make_image(640, 360), make_image(500, 500, "WEBP")
    async with world.running():
        as_is = fake.add_attachment("frame.png", png, "image/png", 640, 360)
        await fake.slash("video", {"image": as_is}, sub="image")
        await world.job_in("delivered")
        converted = fake.add_attachment("frame.webp", webp, "image/webp", 500, 500)
        await fake.slash("video", {"image": converted}, sub="image", user="bob")

        async def both_delivered() -> bool:
            return await world.resources.store.count_in(("delivered",)) == 2

        await wait_until(both_delivered)
    posts = [r for r in sim.requests if r.method == "POST"]
    frames = [p.json["contents"][0]["url"] for p in posts]
    # Base64 once, refused; from then on the URL the gateway can fetch: the member's own attachment as is, then
    # the converted frame the bot posted on the second job's card.
    assert not frames[0].startswith("http") and frames[1] == as_is["url"]
    card = fake.messages[fake.general][1]
    assert len(posts) == 3 and frames[2] == card["attachments"][0]["url"]
    assert card["embeds"][0]["image"]["url"] == frames[2]  # shown on the card, by its URL after the first edit
    assert sim.fetched_urls == [frames[1], frames[2]]


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "first frame by URL only"])
async def test_generate_delivers_once_under_each_variant(sim: KlingSimulator, tmp_path: Path, name: str) -> None:
    sim.variant = VARIANTS[name]
    sim.render_seconds = 0.2
    out = tmp_path / "out.mp4"
    env = env_for(sim, tmp_path, SUBMIT_LOOKUP_SECONDS=str(LOOKUP_SECONDS))
    code, stdout, stderr = await run_cli("generate", "--prompt", "a fox", "--out", str(out), env=env, cwd=tmp_path)
    assert code == 0, stderr
    assert out.read_bytes() == (resources.files("bot") / "assets" / "sample.mp4").read_bytes()
    [task] = sim.tasks.values()
    assert task.external_id is not None and stdout.startswith(f"ok: job {task.external_id}")
