"""/quota and /quota-admin through the fake Discord, with a real SQLite file."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.harness import Harness, harness
from tests.serving.test_chart import MATPLOTLIB_MODULES


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running, running.running():
        yield running


async def answer(interaction: Interaction) -> str:
    await wait_until(lambda: interaction.messages and not interaction.messages[-1]["flags"] & 128)
    assert interaction.ephemeral(-1)
    return interaction.texts()[-1]


async def admin(fake: FakeDiscord, sub: str, options: dict, *, user: str = "mod", **kw: object) -> str:
    return await answer(await fake.slash("quota-admin", options, sub=sub, user=user, **kw))  # type: ignore[arg-type]


async def test_quota_shows_the_default_limit_and_the_reset_time(world: Harness) -> None:
    text = await answer(await world.discord.slash("quota", {}))
    assert "week period, resets <t:" in text
    assert "Limit: 50 credits (about 62 s of 720p) (server default)" in text
    assert "Left: 50 credits" in text and "Jobs in progress: 0 of 2" in text


async def test_a_moderator_sets_a_limit_and_the_member_sees_where_it_comes_from(world: Harness) -> None:
    fake = world.discord
    alice = fake.users["alice"]
    text = await admin(fake, "set", {"member": alice, "limit": 12.5})
    assert text.startswith("Done.") and "no override → limit 12.5" in text
    assert "Limit: 12.5 credits (about 15 s of 720p) (set for you)" in await answer(await fake.slash("quota", {}))
    await admin(fake, "clear", {"member": alice})
    assert "(server default)" in await answer(await fake.slash("quota", {}))


async def test_role_limits_unlimited_roles_and_the_default(world: Harness) -> None:
    fake = world.discord
    role = fake.moderator_role
    await admin(fake, "role", {"role": role, "limit": "80"}, types={"role": 8})
    assert "Limit: 80 credits" in await answer(await fake.slash("quota", {}, user="mod"))
    await admin(fake, "role", {"role": role, "limit": "unlimited"}, types={"role": 8})
    assert "Limit: unlimited (from your role" in await answer(await fake.slash("quota", {}, user="mod"))
    assert "must be a number" in await admin(fake, "role", {"role": role, "limit": "lots"}, types={"role": 8})
    await admin(fake, "default", {"limit": 10.0, "period": "day"})
    text = await answer(await fake.slash("quota", {}))
    assert "day period" in text and "Limit: 10 credits" in text


async def test_grant_block_and_unblock(world: Harness) -> None:
    fake = world.discord
    alice = fake.users["alice"]
    await admin(fake, "grant", {"member": alice, "amount": 5.0, "reason": "won the contest"})
    assert "Bonus granted this period: 5" in await answer(await fake.slash("quota", {}))
    await admin(fake, "block", {"member": alice, "reason": "spamming the channel"})
    assert "may not make videos in this server: spamming the channel" in await answer(await fake.slash("quota", {}))
    refused = await fake.slash("video", {"prompt": "let me"}, sub="text")
    assert "blocked from making videos in this server: spamming the channel" in await answer(refused)
    assert world.sim.requests == []
    await admin(fake, "unblock", {"member": alice})
    assert "Left: 55 credits" in await answer(await fake.slash("quota", {}))


async def test_a_member_without_manage_server_is_refused_at_run_time(world: Harness) -> None:
    fake = world.discord
    for sub, options in [("set", {"member": fake.users["bob"], "limit": 999.0}), ("usage", {}), ("audit", {})]:
        text = await admin(fake, sub, options, user="alice")
        assert text == "You are not allowed to use this command here."
    assert await world.resources.store.audit_entries(int(fake.guild_id)) == []


async def test_every_action_is_audited_and_posted_to_the_log_channel(world: Harness) -> None:
    fake = world.discord
    await admin(fake, "log-channel", {"channel": fake.log_channel}, types={"channel": 7})
    await admin(fake, "set", {"member": fake.users["bob"], "limit": 3.0})
    await fake.slash("video", {"prompt": "logged clip"}, sub="text")
    await world.job_in("delivered")
    await wait_until(lambda: len(fake.messages[fake.log_channel]) == 4)
    posts = [m["content"] for m in fake.messages[fake.log_channel]]
    assert "**log-channel**" in posts[0] and "**set** <@" in posts[1]
    assert "started video" in posts[2] and "delivered" in posts[3]
    assert all(m["allowed_mentions"] == {"parse": []} for m in fake.messages[fake.log_channel])
    audit = await admin(fake, "audit", {"member": fake.users["bob"]})
    assert "**set**" in audit and "**log-channel**" not in audit


async def test_usage_lists_the_top_members_and_the_total(world: Harness) -> None:
    fake = world.discord
    await fake.slash("video", {"prompt": "usage clip", "duration": 5}, sub="text")
    await world.job_in("delivered")
    text = await admin(fake, "usage", {"period": "total"})
    assert f"<@{fake.users['alice']['id']}> · 1 · 5 · 4 · 4" in text
    assert "**Total** · 1 · 5 · 4 · 4" in text


async def test_usage_attaches_the_30_day_chart_as_a_png_beside_its_table(world: Harness) -> None:
    fake = world.discord
    await fake.slash("video", {"prompt": "charted clip", "duration": 5}, sub="text")
    await world.job_in("delivered")
    interaction = await fake.slash("quota-admin", {"period": "total"}, sub="usage", user="mod")
    text = await answer(interaction)
    assert "**Total** · 1 · 5 · 4 · 4" in text
    [(name, png)] = interaction.messages[-1]["files"]
    assert name.endswith(".png") and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


async def test_usage_without_the_web_extra_answers_its_table_alone(
    world: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in MATPLOTLIB_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # importing it fails, as when the extra is not installed
    fake = world.discord
    await fake.slash("video", {"prompt": "uncharted clip", "duration": 5}, sub="text")
    await world.job_in("delivered")
    interaction = await fake.slash("quota-admin", {"period": "total"}, sub="usage", user="mod")
    assert "**Total** · 1 · 5 · 4 · 4" in await answer(interaction)
    assert interaction.messages[-1]["files"] == []


async def test_a_long_audit_page_still_fits_in_one_message(world: Harness) -> None:
    fake = world.discord
    for n in range(12):
        await admin(fake, "grant", {"member": fake.users["bob"], "amount": 1.0, "reason": f"{n} " + "r" * 190})
    text = await admin(fake, "audit", {})
    assert len(text) <= 2000 and "… and" in text
