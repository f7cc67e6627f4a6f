"""The front ends' reads over a real SQLite file: look-ups stay within one server, a video's chain, preferences."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.core.jobs import MAX_CHAIN, InvalidRequest, JobService
from bot.storage.sqlite import Store
from tests.storage.test_store import BLANK

MINE = replace(BLANK, id="abc123", guild_id=1, user_id=3, status="delivered")


async def test_a_job_is_found_by_its_prefix_only_in_its_own_server_and_by_its_member_or_a_moderator(
    service: JobService, store: Store
) -> None:
    await store.add_job(MINE)
    assert (await service.find(1, " ABC ", user_id=3)) == MINE  # as typed: spaces and capitals
    assert await service.find(1, "abc", user_id=4) is None  # another member's
    assert await service.find(1, "abc", user_id=None) == MINE  # a moderator's look-up
    assert await service.find(2, "abc", user_id=None) is None  # never another server's
    assert await service.find(1, "abc", user_id=3, statuses=("failed",)) is None
    assert [j.id for j in await service.member_jobs(1, 3)] == ["abc123"]
    assert await service.count_member_jobs(1, 3) == 1 and await service.count_member_jobs(2, 3) == 0


async def test_a_chain_is_read_root_first_and_stops_at_a_loop_or_at_max_chain(
    service: JobService, store: Store
) -> None:
    await store.add_job(replace(BLANK, id="root"))
    await store.add_job(replace(BLANK, id="middle", parent_id="root"))
    tail = replace(BLANK, id="tail", parent_id="middle")
    await store.add_job(tail)
    assert [j.id for j in await service.chain(tail)] == ["root", "middle", "tail"]
    looped = replace(BLANK, id="a", parent_id="b")
    await store.add_job(replace(BLANK, id="b", parent_id="a"))
    await store.add_job(looped)
    assert [j.id for j in await service.chain(looped)] == ["b", "a"]
    for n in range(MAX_CHAIN + 5):
        await store.add_job(replace(BLANK, id=f"s{n}", parent_id=f"s{n - 1}" if n else None))
    long = await service.get(f"s{MAX_CHAIN + 4}")
    assert long is not None and len(await service.chain(long)) == MAX_CHAIN


async def test_a_notify_preference_defaults_to_mention_and_an_unknown_mode_is_refused(service: JobService) -> None:
    assert await service.notify_preference(3) == "mention"
    await service.set_notify_preference(3, "dm")
    assert await service.notify_preference(3) == "dm"
    with pytest.raises(InvalidRequest, match="mention, dm, off"):
        await service.set_notify_preference(3, "loud")
    assert await service.notify_preference(3) == "dm"
