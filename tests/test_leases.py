"""Claims and leases as the bot lives them: a post an earlier deliverer made is found, not repeated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cogs.delivery import post_nonce
from tests.fake_discord import FakeDiscord
from tests.harness import harness

pytest_plugins = ["tests.postgres"]


def video_posts(fake: FakeDiscord, job_id: str) -> list[dict]:
    """Every request that asked Discord to post this job's video (answered or deduplicated alike)."""
    return [
        r for r in fake.posted("POST", r"/channels/\d+/messages$") if (r.json or {}).get("nonce") == post_nonce(job_id)
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_deliverer_that_stopped_after_its_post_reached_discord_is_not_repeated(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    async with harness(tmp_path) as world:
        if database == "postgres":
            world.settings_overrides = {"database_url": request.getfixturevalue("postgres_dsn")}
        fake = world.discord
        async with world.running():
            await fake.slash("video", {"prompt": "posted, then the deliverer stopped"}, sub="text")
            done = await world.job_in("delivered")
            [thread] = fake.threads()
            [video] = [m for m in fake.messages[thread["id"]] if m["files"]]
            # The state a deliverer leaves when it stops between the post and the row's update, its claim then
            # running out: the video is in the thread, the job still `succeeded`, the lease expired and unreleased.
            store = world.resources.store
            assert await store.transition(
                done.id,
                "delivered",
                "succeeded",
                result_message_id=None,
                delivered_at=None,
                lease_owner="gone-host:1:dead",
                lease_until=time.time() - 1,
                lease_attempt=done.lease_attempt + 1,
                updated_at=time.time(),
            )
            again = await world.job_in("delivered")
        assert again.id == done.id and again.result_message_id == int(video["id"])  # the post found and recorded
        assert len(video_posts(fake, done.id)) == 1  # never asked to post again (not even deduplicated)
        assert [m["id"] for m in fake.messages[thread["id"]] if m["files"]] == [video["id"]]
